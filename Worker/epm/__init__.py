"""The node's EVM agent: one process beside the Worker that makes the EVMs of every EPM on the node.

It runs with the Worker's Python and pyroute2 (requirements.lock) and imports nothing from ``Common`` or
the rest of ``Worker``. Modules: ``names`` (what kernel objects are called), ``nsfs`` (namespace
syscalls), ``kernel`` (one EVM's devices through pyroute2), ``pacing`` (rates), ``desired`` (the Worker's
file), ``report`` (datagrams to the Worker), ``agent`` (one EPM's reconcile loop), ``node`` (the process:
one thread per EPM, inside its network namespace), ``keeper`` (the Worker's side: restarts the process).
"""
