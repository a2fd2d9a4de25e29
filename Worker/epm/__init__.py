"""The EPM agent: runs inside every EPM container and makes its EVMs real.

It is shipped into the EPM image (``Worker/epm_image.py``) and must run on that image's Python 3.11 with
Debian's pyroute2 0.7.2 and the standard library only: nothing here imports ``Common`` or ``Worker``.
Modules: ``names`` (what kernel objects are called), ``nsfs`` (namespace syscalls), ``kernel`` (one EVM's
devices through pyroute2), ``pacing`` (rates), ``desired`` (the Worker's file), ``report`` (datagrams to
the Worker), ``agent`` (the reconcile loop), ``supervisor`` (PID 1: restarts the agent).
"""
