"""Unit tests of the shared package: states, resources, the ZeroMQ envelope and the config loader."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from Common import messaging
from Common.config import ConfigError, load
from Common.keys import Keyring, node_key, worker_keyring, write_key_file
from Common.resources import format_cpuset, parse_cpuset, parse_memory
from Common.states import JobState, TaskState, derive_job_state, job_states_before, task_states_before

MASTER = "unit-test-master-token"
ROOT = Path(__file__).resolve().parent.parent


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
CP = Keyring.control_plane(MASTER)  # what every control-plane actor holds
NODE_N = Keyring.worker("n", node_key(MASTER, "n"))  # what node n's Worker holds


def _signed(kind: str = "task_status", body: dict | None = None, sender: str = "worker-n", to: str = "discovery",
            keys: Keyring = NODE_N, **kw) -> bytes:
    return messaging.encode(kind, GOOD_STATUS if body is None else body, sender, keys.key(sender, to), to, **kw)


def test_envelope_round_trip() -> None:
    env = messaging.decode(_signed(instance="ab" * 8, seq=7), CP, "discovery")
    assert (env.kind, env.body, env.sender, env.instance, env.seq) == (
        "task_status", GOOD_STATUS, "worker-n", "ab" * 8, 7)


def _flip_payload(frame: bytes) -> bytes:
    return frame[:-3] + b"X" + frame[-2:]


@pytest.mark.parametrize("frame", [
    b"not json",
    b"\xff\xfe",
    b"RSW2",
    b"RSW2\x00\x08worker-n",  # truncated before the MAC
    b"RSW2\x00\x07nobody!" + b"0" * 40,  # a sender that is no party
    b"[" * 40000,  # the RecursionError of issue 11, now refused before any parser runs
    _flip_payload(_signed()),  # tampered payload
    _signed()[:-1],  # truncated payload
    messaging.encode("task_status", GOOD_STATUS, "worker-n", b"another-key", "discovery"),  # wrong key
    _signed(to="jobmanager"),  # addressed to another receiver (a cross-receiver replay)
    _signed(body={**GOOD_STATUS, "node": "m"}),  # node n's key, a report about node m
    _signed(sender="worker-m", keys=CP, body={**GOOD_STATUS, "node": "n"}),  # m's key, about n
    _signed("hint", {"reason": "x"}),  # a Worker may not hint Discovery
    _signed("hint", {"reason": "x"}, sender="frontend", keys=CP, to="discovery", ts=float("inf")),
    b"x" * (messaging.MAX_FRAME_BYTES + 1),
])
def test_envelope_rejects_bad_frames(frame: bytes) -> None:
    with pytest.raises(messaging.BadMessage):
        messaging.decode(frame, CP, "discovery")


def test_signed_but_malformed_payloads_are_bad_messages_not_crashes() -> None:
    """Even a holder of the key cannot crash the decoder: deep nesting, huge numbers, wrong shapes."""
    key = CP.key("frontend", "jobmanager")
    head = messaging._header("frontend")
    for payload in (b"[" * 40000, b"1" * 5000, b'{"v": ' + b"9" * 5000 + b"}", b"\xff", b"[]", b"{}"):
        frame = head + hmac.new(key, head + payload, hashlib.sha256).digest() + payload
        with pytest.raises(messaging.BadMessage):
            messaging.decode(frame, CP, "jobmanager")


@pytest.mark.parametrize(("sender", "to", "kind", "body"), [
    ("worker-n", "jobmanager", "hint", {"reason": "worker_remove", "node": "n"}),  # a worker may not make the JM act
    ("worker-n", "discovery", "hint", {"reason": "worker_drained", "node": "n"}),
    ("frontend", "worker-n", "dispatch", {"reason": "x"}),  # only the GM dispatches
    ("discovery", "discovery", "heartbeat", {"node": "n", "at": 1.0}),
])
def test_least_privilege_refuses_kinds_a_sender_may_not_send(sender: str, to: str, kind: str, body: dict) -> None:
    with pytest.raises(messaging.BadMessage):
        messaging.authorize(to, sender, kind, body)


@pytest.mark.parametrize(("kind", "body"), [
    ("nope", {}),
    ("task_status", {**GOOD_STATUS, "state": "EXPLODED"}),
    ("task_status", {**GOOD_STATUS, "attempt": -1}),
    ("task_status", {**GOOD_STATUS, "attempt": "0"}),
    ("task_status", {**GOOD_STATUS, "extra": 1}),
    ("task_status", {k: v for k, v in GOOD_STATUS.items() if k != "job_id"}),
    ("heartbeat", {"node": "n", "at": True}),
    ("task_status", {**GOOD_STATUS, "addresses": {"rsw-net": "not-an-ip"}}),
    ("task_status", {**GOOD_STATUS, "addresses": {"rsw-net": 7}}),
    ("task_status", {**GOOD_STATUS, "addresses": {f"n{i}": "10.0.0.1" for i in range(17)}}),
    ("migration_status", {"migration_id": "m", "state": "DONE", "node": "w", "at": 1.0, "addresses": {"n": "::1"}}),
])
def test_envelope_refuses_invalid_bodies(kind: str, body: dict) -> None:
    with pytest.raises(messaging.BadMessage):
        messaging.check_body(kind, body)


def test_a_worker_keyring_holds_only_its_own_keys() -> None:
    assert NODE_N.key("worker-n", "discovery") == CP.key("worker-n", "discovery")
    assert NODE_N.key("globalmanager", "worker-n") == CP.key("globalmanager", "worker-n")
    assert NODE_N.key("worker-m", "discovery") is None
    assert NODE_N.key("frontend", "jobmanager") is None
    assert NODE_N.key("globalmanager", "worker-m") is None
    assert NODE_N.key("worker-n", "discovery") != NODE_N.key("globalmanager", "worker-n")  # one key per direction
    assert CP.key("worker-n", "discovery") != CP.key("worker-m", "discovery")


def test_replay_guard_drops_replays_and_stale_frames_and_accepts_a_restarted_sender() -> None:
    guard = messaging.ReplayGuard(window=30.0)

    def env(instance: str, seq: int, ts: float = 1000.0) -> messaging.Envelope:
        return messaging.Envelope("heartbeat", {"node": "n", "at": ts}, "worker-n", "discovery", ts, instance, seq)

    guard.admit(env("a" * 16, 1), now=1000.0, mono=0.0)
    guard.admit(env("a" * 16, 3), now=1000.0, mono=0.0)  # gaps are fine (a dropped frame)
    for seq in (3, 2, 1):
        with pytest.raises(messaging.Refused, match="replayed"):
            guard.admit(env("a" * 16, seq), now=1000.0, mono=1.0)
    guard.admit(env("b" * 16, 1), now=1000.0, mono=1.0)  # a restarted sender: a new instance
    with pytest.raises(messaging.Refused, match="old"):
        guard.admit(env("c" * 16, 1, ts=969.0), now=1000.0, mono=1.0)
    with pytest.raises(messaging.Refused, match="ahead"):
        guard.admit(env("c" * 16, 1, ts=1031.0), now=1000.0, mono=1.0)
    # Still refused as a replay until it would be stale anyway (2 windows after its last acceptance).
    with pytest.raises(messaging.Refused, match="replayed"):
        guard.admit(env("a" * 16, 3, ts=1029.0), now=1058.0, mono=59.0)


def test_node_key_file_is_0600_and_a_worker_without_it_has_no_keys(tmp_path) -> None:
    path = write_key_file(tmp_path, "n", MASTER)
    assert path.stat().st_mode & 0o777 == 0o600
    assert worker_keyring(tmp_path, "n", "").key("worker-n", "discovery") == NODE_N.key("worker-n", "discovery")
    with pytest.raises(ValueError, match="missing"):
        worker_keyring(tmp_path, "other", "")
    path.write_text("not hex\n")
    with pytest.raises(ValueError, match="hex"):
        worker_keyring(tmp_path, "n", "")


def test_worker_process_without_a_node_key_or_token_exits_with_a_clear_error(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSWARM_") and k != "MONGO_URI"}
    env.update({"RSWARM_RUN_DIR": str(tmp_path), "RSWARM_WORKER_NAME": "lonely", "RSWARM_CONFIG": str(tmp_path / "x"),
                "PYTHONPATH": str(ROOT)})
    r = subprocess.run([sys.executable, "-m", "Worker"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "worker-lonely.key is missing" in r.stderr


def test_task_addresses_travel_in_the_running_report() -> None:
    body = {**GOOD_STATUS, "addresses": {"rsw-job-1": "10.218.0.5"}}
    assert messaging.decode(_signed("task_status", body), CP, "discovery").body == body


def test_receiver_drops_bad_frames_and_keeps_good_ones() -> None:
    endpoint = "tcp://127.0.0.1:15999"
    rx = messaging.Receiver(endpoint, CP, "jobmanager")
    raw = zmq.Context.instance().socket(zmq.PUSH)
    raw.connect(endpoint)
    good = _signed("hint", {"reason": "ok"}, sender="frontend", to="jobmanager", keys=CP)
    try:
        raw.send(b"garbage")
        raw.send(b"[" * 40000)
        raw.send_multipart([b"two", b"frames"])
        raw.send(good)
        raw.send(good)  # replayed
        assert rx.recv(5.0) == ("hint", {"reason": "ok"}, "frontend")
        assert rx.recv(0.5) is None
        assert rx.rejected == 4
    finally:
        raw.close(0)
        rx.close()


def test_sender_survives_a_body_json_cannot_carry_and_counts_in_order() -> None:
    endpoint = "tcp://127.0.0.1:15997"
    rx = messaging.Receiver(endpoint, CP, "discovery")
    tx = messaging.Sender(endpoint, "worker-n", NODE_N, to="discovery")
    try:
        tx.send("migration_status", {"migration_id": "m", "state": "DONE", "node": "n", "at": 1.0,
                                     "timings": {"bad": {1, 2}}})  # a set: not JSON
        for i in range(3):
            tx.send("heartbeat", {"node": "n", "at": float(i)})
        got = [rx.recv(5.0) for _ in range(3)]
        assert [m[1]["at"] for m in got if m] == [0.0, 1.0, 2.0]
        assert tx.dropped == 1 and rx.rejected == 0
    finally:
        tx.close()
        rx.close()


def test_subscription_topics_match_exactly() -> None:
    endpoint = "tcp://127.0.0.1:15998"
    pub = messaging.Sender(endpoint, "globalmanager", CP, pub=True, bind=True)
    sub = messaging.Receiver(endpoint, Keyring.worker("w1", node_key(MASTER, "w1")), subscribe="w1")
    time.sleep(0.3)  # let the subscription reach the publisher
    try:
        pub.send("dispatch", {"reason": "for w10"}, node="w10")
        pub.send("dispatch", {"reason": "for w1"}, node="w1")
        assert sub.recv(5.0) == ("dispatch", {"reason": "for w1"}, "globalmanager")
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
    ("", {"RSWARM_ZMQ_MAX_FRAME_BYTES": "100"}, "zmq.max_frame_bytes"),
    ("", {"RSWARM_ZMQ_REPLAY_WINDOW_SECONDS": "0"}, "zmq.replay_window_seconds"),
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


def test_engine_start_timing_out_inside_the_engine_is_transient_and_other_500s_are_permanent() -> None:
    """The engine's own deadline on a start (seen for real in the chaos run: "attaching to network failed, …:
    context deadline exceeded" while the host was loaded) can be retried; an OCI runtime refusal cannot. A
    real engine cannot be made to time out on demand, so its answer is replayed by a fake low-level client
    (the Engine is real, connected to the local dockerd)."""
    import requests
    from docker.errors import APIError

    from Worker.engine import Engine, StartFailed, StartTimedOut

    def answering(message: str):
        class Api:
            def start(self, container_id: str) -> None:
                resp = requests.Response()
                resp.status_code = 500
                raise APIError("500 Server Error", response=resp, explanation=message)
        return Api()

    engine = Engine("unix:///var/run/docker.sock", "rswtest-units")
    engine.api = answering("attaching to network failed, make sure your network options are correct and check "
                           "manager logs: context deadline exceeded")
    with pytest.raises(StartTimedOut, match="context deadline exceeded"):
        engine.start("c1")
    engine.api = answering("failed to create task for container: OCI runtime create failed: mount /proc/x")
    with pytest.raises(StartFailed, match="OCI runtime"):
        engine.start("c1")
