"""StressClient: load RESTfulSwarm with exact arrival processes, measure every job, report.

    python -m StressClient steady --rate 1 --duration 60 --template StressClient/templates/sleep-1x1.json --out DIR
    python -m StressClient report DIR

Modules: ``generators`` (pure arrival schedules), ``templates`` (job bodies), ``trace`` (replay
files), ``runner`` (open-loop submitter + poller + sampler), ``measure`` (figures), ``report``
(results.json, jobs.csv, summary, plots). See docs/stressclient.md.
"""
