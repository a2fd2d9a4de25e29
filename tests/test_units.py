"""Unit tests of the shared package: states, resources, the ZeroMQ envelope and the config loader."""

from __future__ import annotations

import json
import time

import pytest
import zmq

from Common import messaging
from Common.config import ConfigError, load
from Common.resources import format_cpuset, parse_cpuset, parse_memory
from Common.states import JobState, TaskState, derive_job_state, job_states_before, task_states_before

KEY = b"unit-test-key"


# ---- states -----------------------------------------------------------------------------------
def test_task_states_only_move_forward() -> None:
    assert task_states_before(TaskState.RUNNING) == ["PENDING", "SCHEDULED", "STARTING"]
    assert "RUNNING" not in task_states_before(TaskState.RUNNING)
    for terminal in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED, TaskState.LOST):
        assert not {"COMPLETED", "FAILED", "CANCELLED", "LOST"} & set(task_states_before(terminal))


def test_cancelling_lies_between_running_and_the_job_end_states() -> None:
    assert "CANCELLING" not in job_states_before(JobState.CANCELLING)
    assert "RUNNING" in job_states_before(JobState.CANCELLING)
    for end in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED):
        assert "CANCELLING" in job_states_before(end)


@pytest.mark.parametrize(("tasks", "job"), [
    (["PENDING", "PENDING"], JobState.QUEUED),
    (["SCHEDULED", "PENDING"], JobState.QUEUED),
    (["SCHEDULED", "STARTING"], JobState.SCHEDULED),
    (["RUNNING", "STARTING"], JobState.SCHEDULED),
    (["RUNNING", "COMPLETED"], JobState.RUNNING),
    (["COMPLETED", "COMPLETED"], JobState.COMPLETED),
    (["COMPLETED", "CANCELLED"], JobState.CANCELLED),
    (["FAILED", "CANCELLED"], JobState.FAILED),
    (["LOST", "COMPLETED"], JobState.FAILED),
])
def test_job_state_follows_its_tasks(tasks: list[str], job: JobState) -> None:
    assert derive_job_state([TaskState(s) for s in tasks]) == job


@pytest.mark.parametrize(("tasks", "job"), [
    (["RUNNING", "RUNNING"], JobState.CANCELLING),
    (["LOST", "RUNNING"], JobState.CANCELLING),
    (["LOST", "CANCELLED"], JobState.CANCELLED),
    (["FAILED", "COMPLETED"], JobState.CANCELLED),
])
def test_a_user_cancelled_job_is_cancelling_then_cancelled_whatever_its_tasks_did(tasks: list[str],
                                                                                   job: JobState) -> None:
    assert derive_job_state([TaskState(s) for s in tasks], user_cancelled=True) == job


# ---- resources --------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "cores"), [("0", [0]), ("0-2,5", [0, 1, 2, 5]), ("3,1,2", [1, 2, 3]),
                                             (" 4 - 4 ".replace(" ", ""), [4])])
def test_cpuset_round_trip(text: str, cores: list[int]) -> None:
    assert parse_cpuset(text) == cores
    assert parse_cpuset(format_cpuset(cores)) == cores


@pytest.mark.parametrize("bad", ["", "a", "1-", "-1", "3-1", "1,,2", "99999", "0-5000"])
def test_cpuset_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_cpuset(bad)


@pytest.mark.parametrize(("text", "n"), [("64m", 64 * 2**20), ("1g", 2**30), ("512k", 512 * 1024),
                                         ("1024", 1024), (4096, 4096), ("2GB", 2 * 2**30)])
def test_memory_parses(text, n) -> None:
    assert parse_memory(text) == n


@pytest.mark.parametrize("bad", ["", "m", "-1m", "1.5g", "0", 0, -5, True, None, [64]])
def test_memory_rejects(bad) -> None:
    with pytest.raises(ValueError):
        parse_memory(bad)


# ---- the ZeroMQ envelope ----------------------------------------------------------------------
GOOD_STATUS = {"job_id": "j", "task": "t", "attempt": 0, "state": "RUNNING", "node": "n", "at": 1.0}


def test_envelope_round_trip() -> None:
    frame = messaging.encode("task_status", GOOD_STATUS, "worker-n", KEY)
    assert messaging.decode(frame, KEY) == ("task_status", GOOD_STATUS, "worker-n")


def _tamper(frame: bytes, **changes) -> bytes:
    doc = json.loads(frame)
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("frame", [
    b"not json",
    b"\xff\xfe",
    b"[]",
    b'{"v": 1}',
    _tamper(messaging.encode("hint", {"reason": "x"}, "s", KEY), mac="0" * 64),
    _tamper(messaging.encode("hint", {"reason": "x"}, "s", KEY), body={"reason": "forged"}),
    _tamper(messaging.encode("hint", {"reason": "x"}, "s", KEY), v=2),
    messaging.encode("hint", {"reason": "x"}, "s", b"another-key"),
    b"x" * (messaging.MAX_FRAME_BYTES + 1),
])
def test_envelope_rejects_bad_frames(frame: bytes) -> None:
    with pytest.raises(messaging.BadMessage):
        messaging.decode(frame, KEY)


@pytest.mark.parametrize(("kind", "body"), [
    ("nope", {}),
    ("task_status", {**GOOD_STATUS, "state": "EXPLODED"}),
    ("task_status", {**GOOD_STATUS, "attempt": -1}),
    ("task_status", {**GOOD_STATUS, "attempt": "0"}),
    ("task_status", {**GOOD_STATUS, "extra": 1}),
    ("task_status", {k: v for k, v in GOOD_STATUS.items() if k != "job_id"}),
    ("heartbeat", {"node": "n", "at": True}),
])
def test_envelope_refuses_invalid_bodies(kind: str, body: dict) -> None:
    with pytest.raises(messaging.BadMessage):
        messaging.encode(kind, body, "s", KEY)


def test_receiver_drops_bad_frames_and_keeps_good_ones() -> None:
    endpoint = "tcp://127.0.0.1:15999"
    rx = messaging.Receiver(endpoint, KEY)
    raw = zmq.Context.instance().socket(zmq.PUSH)
    raw.connect(endpoint)
    try:
        raw.send(b"garbage")
        raw.send_multipart([b"two", b"frames"])
        raw.send(messaging.encode("hint", {"reason": "ok"}, "test", KEY))
        msg = rx.recv(5.0)
        assert msg == ("hint", {"reason": "ok"}, "test")
        assert rx.rejected == 2
    finally:
        raw.close(0)
        rx.close()


def test_subscription_topics_match_exactly() -> None:
    endpoint = "tcp://127.0.0.1:15998"
    pub = messaging.Sender(endpoint, "gm", KEY, pub=True, bind=True)
    sub = messaging.Receiver(endpoint, KEY, subscribe="w1")
    time.sleep(0.3)  # let the subscription reach the publisher
    try:
        pub.send("dispatch", {"reason": "for w10"}, node="w10")
        pub.send("dispatch", {"reason": "for w1"}, node="w1")
        assert sub.recv(5.0) == ("dispatch", {"reason": "for w1"}, "gm")
        assert sub.recv(0.3) is None
    finally:
        pub.close()
        sub.close()


# ---- config -----------------------------------------------------------------------------------
def test_config_defaults_are_loopback(tmp_path) -> None:
    cfg = load(tmp_path / "absent.toml", env={})
    assert cfg.frontend.host == "127.0.0.1" and cfg.frontend.port == 5001
    assert cfg.globalmanager.port == 5000
    assert cfg.mongo_uri.startswith("mongodb://127.0.0.1:")


def test_config_file_then_environment(tmp_path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[frontend]\nport = 6001\nhost = "127.0.0.2"\n[worker]\ncores = "0-1"\n')
    cfg = load(f, env={"RSWARM_FRONTEND_PORT": "7001", "MONGO_URI": "mongodb://db:27017/"})
    assert cfg.frontend.port == 7001 and cfg.frontend.host == "127.0.0.2"
    assert cfg.worker.cores == "0-1"
    assert cfg.mongo_uri == "mongodb://db:27017/"


@pytest.mark.parametrize(("text", "env", "needle"), [
    ("[frontend]\nport = 'x'\n", {}, "frontend.port"),
    ("[frontend]\nnope = 1\n", {}, "frontend.nope"),
    ("[mystery]\n", {}, "mystery"),
    ("not toml = = =", {}, "TOML"),
    ("", {"RSWARM_DISCOVERY_PORT": "0"}, "discovery.port"),
    ("", {"RSWARM_WORKER_HEARTBEAT_SECONDS": "fast"}, "RSWARM_WORKER_HEARTBEAT_SECONDS"),
    ("", {"RSWARM_GLOBALMANAGER_NETWORK_PREFIX": "31"}, "network_prefix"),
    ("[worker]\nparallelism = 0\n", {}, "worker.parallelism"),
])
def test_config_errors_name_the_key(tmp_path, text: str, env: dict, needle: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load(f, env=env)


def test_retryable_writes_are_off_only_against_the_embedded_server(tmp_path) -> None:
    from Common.store import Store

    embedded = Store.connect(load(tmp_path / "none.toml", env={}))
    remote = Store.connect(load(tmp_path / "none.toml", env={"MONGO_URI": "mongodb://127.0.0.1:1/"}))
    try:  # no connection is made: client options only
        assert embedded.db.client.options.retry_writes is False
        assert remote.db.client.options.retry_writes is True
    finally:
        embedded.db.client.close()
        remote.db.client.close()


def test_a_reconcile_pass_runs_container_operations_concurrently_and_reraises_the_first_error() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from Worker.worker import Worker

    pool = ThreadPoolExecutor(4)
    try:
        host = SimpleNamespace(_pool=pool)
        barrier = threading.Barrier(3, timeout=10)  # passes only if three operations run at the same time
        done: list[int] = []
        Worker._run_all(host, [lambda i=i: (barrier.wait(), done.append(i)) for i in range(3)])
        assert sorted(done) == [0, 1, 2]

        def boom() -> None:
            raise RuntimeError("engine said no")

        done.clear()
        with pytest.raises(RuntimeError, match="engine said no"):
            Worker._run_all(host, [lambda: done.append(1), boom, lambda: done.append(2)])
        assert sorted(done) == [1, 2]  # the others still ran
    finally:
        pool.shutdown()
