"""Worker: one per Swarm node. Runs tasks' containers on its own engine, watches them, reports."""
