"""GlobalManager: act on the Swarm. Init, nodes, one overlay network per job, dispatch hints to Workers."""
