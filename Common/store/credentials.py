"""MongoDB credentials: one SCRAM-SHA-256 user per role, each password in its own 0600 file.

    <run_dir>/secrets/mongo-admin.json     the operator's user (root): user management, backups, tests
    <run_dir>/secrets/mongo-control.json   FrontEnd, JobManager, GlobalManager, Discovery, Management.py
    <run_dir>/secrets/mongo-worker.json    Workers (shipped to each remote host's run directory, 0600)

A file holds ``{"user": ..., "password": ...}``. Passwords never travel in argv, in the environment or
in a URI that could be logged: the client gets them as pymongo's ``username``/``password`` options,
read from the file at connect time. The files are created (O_EXCL, 0600, in a 0700 directory) by
``Management.py up`` before the embedded server starts; see Common/ops/mongo.py.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from Common.config import Config

ROLES = ("admin", "control", "worker")
USERS = {"admin": "rswarm-admin", "control": "rswarm-control", "worker": "rswarm-worker"}


def secrets_dir(cfg: Config) -> Path:
    return cfg.run_path / "secrets"


def credential_file(cfg: Config, role: str) -> Path:
    if role not in ROLES:
        raise ValueError(f"unknown MongoDB role {role!r}")
    return secrets_dir(cfg) / f"mongo-{role}.json"


def read_credentials(cfg: Config, role: str) -> dict[str, str] | None:
    """``{"user", "password"}`` of ``role`` from its file, or None when there is none."""
    try:
        raw = json.loads(credential_file(cfg, role).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{credential_file(cfg, role)}: unreadable MongoDB credentials ({type(exc).__name__})") \
            from None
    if not isinstance(raw, dict) or not isinstance(raw.get("user"), str) or not isinstance(raw.get("password"), str):
        raise ValueError(f"{credential_file(cfg, role)}: must hold {{\"user\": ..., \"password\": ...}}")
    return {"user": raw["user"], "password": raw["password"]}


def write_credentials(path: Path, user: str, password: str) -> None:
    """Write a credential file that no one but its owner can read, from the first byte on."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"user": user, "password": password}, f)
    os.replace(tmp, path)


def ensure_credentials(cfg: Config) -> dict[str, dict[str, str]]:
    """Every role's credentials, generating the missing files (a random 32-byte password each)."""
    out = {}
    for role in ROLES:
        cred = read_credentials(cfg, role)
        if cred is None:
            write_credentials(credential_file(cfg, role), USERS[role], secrets.token_urlsafe(32))
            cred = read_credentials(cfg, role)
        assert cred is not None
        out[role] = cred
    return out


def uri_has_credentials(uri: str) -> bool:
    return "@" in (urlsplit(uri).netloc or "")


def uri_credentials(uri: str) -> dict[str, str] | None:
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return None
    userinfo = parts.netloc.rsplit("@", 1)[0]
    user, _, password = userinfo.partition(":")
    return {"user": unquote(user), "password": unquote(password)}


def strip_credentials(uri: str) -> str:
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def stash_uri_credentials(cfg: Config) -> str:
    """For the processes Management.py starts: a ``MONGO_URI``'s user and password go into the control and
    worker credential files (0600), and the URI they are handed carries none, so no child's environment
    holds the password. Returns that URI."""
    cred = uri_credentials(cfg.mongo.uri)
    if cred is None:
        return cfg.mongo.uri
    for role in ("control", "worker"):
        if read_credentials(cfg, role) != cred:
            write_credentials(credential_file(cfg, role), cred["user"], cred["password"])
    return strip_credentials(cfg.mongo.uri)


def redact(uri: str) -> str:
    """The URI with any password replaced by ``***``: the only form in which a URI is printed or logged."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def client_options(cfg: Config, role: str) -> dict[str, Any]:
    """pymongo options that authenticate as ``role`` when its credential file exists (and the URI carries no
    credentials of its own), plus the TLS CA file when one is configured."""
    opts: dict[str, Any] = {}
    cred = None if uri_has_credentials(cfg.mongo_uri) else read_credentials(cfg, role)
    if cred is not None:
        opts.update(username=cred["user"], password=cred["password"])
        query = urlsplit(cfg.mongo_uri).query.lower()
        if "authsource=" not in query:  # a MONGO_URI's own authSource/authMechanism win
            opts["authSource"] = "admin"
        if "authmechanism=" not in query:
            opts["authMechanism"] = "SCRAM-SHA-256"
    if cfg.mongo.tls_ca_file:
        opts.update(tls=True, tlsCAFile=cfg.mongo.tls_ca_file)
    return opts
