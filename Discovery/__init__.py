"""Discovery: record what actually happened. Task transitions, claim releases, heartbeats."""
