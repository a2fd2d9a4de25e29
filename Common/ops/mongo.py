"""The embedded MongoDB (SecantusDB's ``secantusd-py`` daemon): its users and its command line.

``prepare(cfg)`` is everything Management.py (or a supervisor) needs before it starts the daemon, and
is self-contained: it makes the credential files (Common/store/credentials.py), writes the users and
roles into the server's data directory, and returns the argv. The daemon must not be running while it
writes: WiredTiger allows one process per data directory.

Users are written offline, straight into the data directory through SecantusDB's own Storage and
credential derivation, instead of SecantusDB's documented route (start without ``--auth``, run
``createUser``, restart with ``--auth``): that route leaves a window in which anyone reaching the port
could create a user of their own. The server never runs without ``--auth`` unless the operator turned
``mongo.embedded_auth`` off on a loopback-only deployment.

Roles. SecantusDB 0.7 checks a privilege against (database, action) only: the ``collection`` of a
custom role's resource is ignored, so "may write ``settings``" cannot be told apart from "may write
``jobs``". The closest split is by action, on the deployment's database only:

    rswarmControl  find insert update remove, createCollection createIndex dropIndex listCollections
                   listIndexes collStats dbStats killCursors
    rswarmWorker   find insert update remove, listCollections listIndexes killCursors (no DDL: it cannot
                   create or drop an index, drop a collection or database, or touch any other database)
    admin user     built-in ``root`` (operator only; used by no actor)
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any

from Common.config import Config
from Common.store import credentials

CONTROL_ACTIONS = ["find", "insert", "update", "remove", "createCollection", "createIndex", "dropIndex",
                   "listCollections", "listIndexes", "collStats", "dbStats", "killCursors"]
WORKER_ACTIONS = ["find", "insert", "update", "remove", "listCollections", "listIndexes", "killCursors"]
ROLE_OF = {"control": ("rswarmControl", CONTROL_ACTIONS), "worker": ("rswarmWorker", WORKER_ACTIONS)}


def data_dir(cfg: Config) -> Path:
    return cfg.run_path / "mongo"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_on(cfg: Config) -> bool:
    """Auth is on unless turned off, and always when the server listens beyond loopback."""
    return cfg.mongo.embedded_auth or not is_loopback(cfg.mongo.embedded_host)


def provision(cfg: Config) -> None:
    """Write the roles and users (passwords from their 0600 files) into the stopped server's data directory.

    Idempotent: every ``up`` rewrites them, so a changed password file or a changed role takes effect on
    the next start (that is how the passwords are rotated: see docs/security.md)."""
    from secantus.auth import derive_credentials
    from secantus.storage import Storage

    creds = credentials.ensure_credentials(cfg)
    path = data_dir(cfg)
    path.mkdir(parents=True, exist_ok=True)
    db = cfg.mongo.database
    storage = Storage(str(path))
    try:
        for name, actions in ROLE_OF.values():
            storage.add_role("admin", name, {
                "_id": f"admin.{name}", "role": name, "db": "admin", "roles": [],
                "privileges": [{"resource": {"db": db, "collection": ""}, "actions": actions}],
            }, replace=True)
        bindings: dict[str, list[dict[str, Any]]] = {
            "admin": [{"role": "root", "db": "admin"}],
            "control": [{"role": "rswarmControl", "db": "admin"}],
            "worker": [{"role": "rswarmWorker", "db": "admin"}],
        }
        for role, cred in creds.items():
            user = cred["user"]
            storage.add_user("admin", user, {
                "_id": f"admin.{user}", "user": user, "db": "admin",
                "credentials": derive_credentials(cred["password"]).to_doc(),
                "roles": bindings[role], "mechanisms": ["SCRAM-SHA-256"],
            }, replace=True)
    finally:
        storage.close()


def server_argv(cfg: Config) -> list[str]:
    """The daemon's command line: no secret in it (the users live in the data directory)."""
    daemon = Path(sys.executable).parent / "secantusd-py"
    # --standalone: no replica-set advertisement, hence no oplog. Nothing here reads one (no change stream,
    # no transaction; retryable writes are off against this server: Common/store.embedded_options), and
    # writing it doubled the server's CPU per update (BENCHMARKS.md, "The embedded MongoDB without its oplog").
    argv = [str(daemon), "--host", cfg.mongo.embedded_host, "--port", str(cfg.mongo.embedded_port),
            "--storage-path", str(data_dir(cfg)), "--log-level", "WARNING", "--standalone"]
    if auth_on(cfg):
        argv.append("--auth")
    if cfg.mongo.tls_cert_file:
        argv += ["--tls-cert-file", cfg.mongo.tls_cert_file, "--tls-key-file", cfg.mongo.tls_key_file]
    return argv


def prepare(cfg: Config) -> list[str]:
    """Users written (when auth is on), then the argv that starts the embedded server."""
    if auth_on(cfg):
        provision(cfg)
    return server_argv(cfg)
