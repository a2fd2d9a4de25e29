"""JobManager: decide. Queue, placement strategies, atomic resource claims; asks the GM to deploy."""
