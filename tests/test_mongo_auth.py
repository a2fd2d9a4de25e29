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
from Common.store.credentials import ROLES, credential_file, read_credentials

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
    assert "--auth" in json.loads((procs.pid_dir / "mongo.json").read_text())["argv"]
    assert os.environ.get("MONGO_URI", "") == ""  # this run is the embedded server's
