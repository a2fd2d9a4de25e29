"""The embedded MongoDB runs with SCRAM-SHA-256 and one user per role (docs/security.md).

Against the real SecantusDB daemon the system fixture started, over the wire: a client without
credentials reads and writes nothing; the worker role cannot run DDL nor touch another database; the
passwords live in 0600 files and appear in no process's argv or environment, nor in any log.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

import pymongo
import pytest

import Management
from Common.store import Store
from Common.store.credentials import ROLES, client_options, credential_file, read_credentials
from tests.helpers import admin_uri

pytestmark = pytest.mark.system


def _refused(op) -> int:
    with pytest.raises(pymongo.errors.OperationFailure) as info:
        op()
    return info.value.code


def test_unauthenticated_client_reads_and_writes_nothing(system, store) -> None:
    marker = f"unauth-{uuid.uuid4().hex[:8]}"
    store.db["jobs"].insert_one({"_id": marker, "state": "COMPLETED", "tasks": {}})
    try:
        anon = pymongo.MongoClient(system.mongo_uri, serverSelectionTimeoutMS=5000)
        db = anon[system.mongo.database]
        assert _refused(lambda: db["jobs"].find_one({"_id": marker})) == 13
        assert _refused(lambda: db["settings"].insert_one({"_id": "scheduler", "strategy": "evil"})) == 13
        assert _refused(lambda: db["jobs"].update_one({"_id": marker}, {"$set": {"state": "RUNNING"}})) == 13
        assert _refused(lambda: anon.list_database_names()) == 13
        assert _refused(lambda: db.command("createUser", "evil", pwd="x", roles=["root"])) == 13
        anon.close()
        assert store.db["jobs"].find_one({"_id": marker})["state"] == "COMPLETED"
        assert store.db["settings"].find_one({"strategy": "evil"}) is None
    finally:
        store.db["jobs"].delete_one({"_id": marker})


def test_the_embedded_server_is_a_standalone_that_writes_no_oplog(system, store) -> None:
    """Management.py starts SecantusDB with --standalone (Common/ops/mongo.py): the server says so in its
    ``hello`` and, after the system's own writes and one here, its oplog holds nothing."""
    store.db["settings"].update_one({"_id": "oplog-probe"}, {"$inc": {"n": 1}}, upsert=True)
    try:
        admin = pymongo.MongoClient(admin_uri(system), serverSelectionTimeoutMS=5000)
        hello = admin.admin.command("hello")
        assert hello["isWritablePrimary"] and "setName" not in hello, hello
        assert admin["local"]["oplog.rs"].count_documents({}) == 0
        admin.close()
    finally:
        store.db["settings"].delete_one({"_id": "oplog-probe"})


def test_worker_role_cannot_create_or_drop_indexes_collections_databases_or_users(system, store) -> None:
    worker = Store.connect(system, "worker-probe")
    try:
        probe = {"_id": f"probe-{uuid.uuid4().hex[:8]}"}  # what it needs: read, insert, update, remove documents
        worker.db["checkpoints"].insert_one(probe)
        assert worker.db["checkpoints"].update_one(probe, {"$set": {"x": 1}}).modified_count == 1
        assert worker.db["checkpoints"].delete_one(probe).deleted_count == 1
        assert _refused(lambda: worker.db["jobs"].create_index("probe_field")) == 13
        assert _refused(lambda: worker.db["settings"].drop()) == 13
        assert _refused(lambda: worker.db.client.drop_database(system.mongo.database)) == 13
        assert _refused(lambda: worker.db.client["other_db"]["x"].insert_one({"a": 1})) == 13
        assert _refused(lambda: worker.db.command("createUser", "evil", pwd="x", roles=["root"])) == 13
        assert "probe_field_1" not in store.db["jobs"].index_information()
    finally:
        worker.close()


def test_credentials_are_0600_files_and_in_no_argv_environment_or_log(system) -> None:
    passwords = []
    for role in ROLES:
        path = credential_file(system, role)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        passwords.append(read_credentials(system, role)["password"])
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    procs = Management.Processes(system)
    seen = 0
    for name in ("mongo", *Management.ACTORS):
        pid = procs.alive(name)
        if pid is None:
            continue
        seen += 1
        blobs = [Path(f"/proc/{pid}/cmdline").read_bytes(), Path(f"/proc/{pid}/environ").read_bytes()]
        for pw in passwords:
            assert all(pw.encode() not in b for b in blobs), f"a MongoDB password is in {name}'s argv or environment"
    assert seen == 1 + len(Management.ACTORS)
    for log in procs.log_dir.glob("*.log"):
        text = log.read_bytes()
        for pw in passwords:
            assert pw.encode() not in text, f"a MongoDB password is in {log}"
    status = json.dumps(Management.status(system))
    assert all(pw not in status for pw in passwords)
    mongo_pid = procs.alive("mongo")
    assert mongo_pid and b"--auth" in Path(f"/proc/{mongo_pid}/cmdline").read_bytes().split(b"\0")
    assert os.environ.get("MONGO_URI", "") == ""  # this run is the embedded server's


def test_tls_configured_server_refuses_plaintext_and_serves_clients_given_the_ca(tmp_path) -> None:
    """The embedded server with mongo.tls_* set (its own data dir and port, not the session's): the actors'
    client options (CA file) connect and authenticate over TLS; a plaintext client gets nothing."""
    import subprocess
    import time

    from Common.config import load as load_config
    from Common.ops import mongo
    from tests.conftest import SLOT

    ca_key, ca, key, csr, cert = (tmp_path / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "1",
            "-subj", "/CN=rswarm-test-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out",
            str(cert), "-days", "1", "-extfile", str(ext))
    cfg = load_config("/nonexistent.toml", env={
        "RSWARM_RUN_DIR": str(tmp_path / "run"), "RSWARM_MONGO_EMBEDDED_PORT": str(28417 + SLOT),
        "RSWARM_MONGO_TLS_CERT_FILE": str(cert), "RSWARM_MONGO_TLS_KEY_FILE": str(key),
        "RSWARM_MONGO_TLS_CA_FILE": str(ca)})
    argv = mongo.prepare(cfg)
    assert "--tls-cert-file" in argv and "--auth" in argv
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        s = Store.connect(cfg, "tls-probe")
        deadline = time.monotonic() + 60
        while not s.ping() and time.monotonic() < deadline:
            time.sleep(0.2)
        s.db["probe"].insert_one({"_id": 1})
        assert s.db["probe"].find_one({"_id": 1}) == {"_id": 1}
        s.close()
        creds = {k: v for k, v in client_options(cfg, "control").items() if not k.startswith("tls")}
        plain = pymongo.MongoClient(cfg.mongo_uri, serverSelectionTimeoutMS=2000, **creds)
        with pytest.raises(pymongo.errors.PyMongoError):
            plain[cfg.mongo.database]["probe"].find_one()
        plain.close()
    finally:
        proc.terminate()
        proc.wait(20)
