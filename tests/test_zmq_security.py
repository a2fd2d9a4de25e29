"""ZeroMQ frames against the real, running system: fuzz, replay, and one node's key used for another.

Every frame here is sent from outside, over a real socket, to the real actors' ports. Where a test
needs a genuine Worker's frames it runs a second, real Worker process (its own node name, its own
cluster label so that it never touches this deployment's containers) whose reports go to a socket
of the test's own: that is how the frames are captured.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import zmq
from prometheus_client.parser import text_string_to_metric_families

import Management
from Common import keys as keymod
from Common import messaging
from Common.config import Config
from Common.keys import Keyring, node_key
from Common.store import credentials
from tests.conftest import ROOT, SLOT, TEST_CLUSTER
from tests.helpers import Api, sleeper, task_job, wait_for

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("idle_cluster")]

ACTORS = ("mongo", "globalmanager", "discovery", "jobmanager", "frontend", "worker")
ZMQ_IN = "rswarm_zmq_messages_total"


# ---- helpers ---------------------------------------------------------------------------------------
def _pids(cfg: Config) -> dict[str, int | None]:
    procs = Management.Processes(cfg)
    return {a: procs.alive(a) for a in ACTORS}


def _counter(cfg: Config, actor: str, **labels: str) -> float:
    sub = getattr(cfg, actor)
    text = requests.get(f"http://{sub.metrics_host}:{sub.metrics_port}/metrics", timeout=30).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == ZMQ_IN and all(s.labels.get(k) == v for k, v in labels.items()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pusher:
    """One PUSH connection to a receiver: frames arrive, and are handled, in the order sent."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.sock = zmq.Context.instance().socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 5000)
        self.sock.connect(endpoint)

    def send(self, *frames: bytes) -> None:
        for f in frames:
            self.sock.send(f)

    def close(self) -> None:
        self.sock.close()  # lingers until every queued frame is on the wire


def _sign(keys: Keyring, kind: str, body: dict, sender: str, to: str, seq: int, instance: str | None = None,
          ts: float | None = None) -> bytes:
    key = keys.key(sender, to)
    assert key is not None, (sender, to)
    return messaging.encode(kind, body, sender, key, to, instance or os.urandom(8).hex(), seq, ts)


def _fuzz_corpus(master: str, to: str, node: str, rng: random.Random) -> tuple[list[bytes | list[bytes]], bytes]:
    """A few hundred bad frames for receiver ``to``, and one valid, harmless frame (to replay)."""
    cp = Keyring.control_plane(master)
    wrong = Keyring.control_plane("not-" + master)
    hint_sender = "frontend"
    hint = {"reason": "fuzz"}  # a reason no receiver acts on
    status = {"job_id": "fuzz", "task": "t", "attempt": 0, "state": "FAILED", "node": node, "at": time.time()}
    frames: list[bytes | list[bytes]] = []
    frames += [rng.randbytes(rng.randint(0, 3000)) for _ in range(60)]  # noise
    frames += [b"[" * 40000, b"{" * 40000, b"9" * 5000, b'{"v": 1, "n": ' + b"9" * 5000 + b"}",
               b'{"v":1,"kind":"hint","sender":"frontend","ts":0,"body":{"reason":"x"},"mac":"' + b"0" * 64 + b'"}']
    for sender in ("frontend", "discovery", "globalmanager", f"worker-{node}", "worker-x" * 40):
        head = messaging._header(sender[:300])
        for payload in (b"[" * 40000, b"9" * 5000, b"{}", rng.randbytes(200)):
            frames.append(head + bytes(32) + payload)  # unsigned
            frames.append(head + rng.randbytes(32) + payload)  # a guessed MAC
    for seq in range(1, 31):  # signed with a key derived from another master
        frames.append(_sign(wrong, "hint", hint, hint_sender, to, seq))
        frames.append(_sign(wrong, "task_status", status, f"worker-{node}", to, seq))
    other = Keyring.worker("fuzz-other", node_key(master, "fuzz-other"))
    for seq in range(1, 21):  # a real node key, used beyond its rights
        frames.append(_sign(other, "task_status", status, "worker-fuzz-other", to, seq))  # names another node
        remove = {"reason": "worker_remove", "node": node}  # would make the JobManager act
        frames.append(_sign(other, "hint", remove, "worker-fuzz-other", to, seq + 100))
    for seq in range(1, 21):  # genuine signatures, outside the window or to another receiver
        frames.append(_sign(cp, "hint", hint, hint_sender, to, seq, ts=time.time() - 600))
        frames.append(_sign(cp, "hint", hint, hint_sender, to, seq + 100, ts=time.time() + 600))
        frames.append(_sign(cp, "hint", hint, hint_sender, "jobmanager" if to == "discovery" else "discovery", seq))
    frames += [[b"two", b"parts"], [b"", b"", b""], [rng.randbytes(10)] * 5]
    rng.shuffle(frames)
    return frames, _sign(cp, "hint", hint, hint_sender, to, 1)


def _oversized(endpoint: str, max_bytes: int) -> None:
    """Frames over ZMQ_MAXMSGSIZE: libzmq drops each such connection, so every one gets its own."""
    for size in (max_bytes + 1, 4 * max_bytes, 8 << 20):
        p = Pusher(endpoint)
        p.send(b"x" * size)
        p.close()


def _tcp_garbage(port: int, rng: random.Random) -> None:
    """Bytes that are not even ZMTP, straight onto the TCP port."""
    for _ in range(10):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(rng.randbytes(rng.randint(1, 70000)))
        except OSError:
            pass  # the peer hung up on us: that is the expected answer


# ---- the fuzz ----------------------------------------------------------------------------------------
def test_zmq_fuzz_leaves_every_actor_alive_and_a_job_submitted_during_it_completes(system: Config, api: Api) -> None:
    before = _pids(system)
    assert all(before.values()), before
    rng = random.Random(20261130)
    node = system.worker_name
    replays = {"discovery": 0, "jobmanager": 0}
    replayed_before = {a: _counter(system, a, direction="in", kind="hint", outcome="replayed") for a in replays}
    rejected_before = {a: _counter(system, a, direction="in", outcome="rejected") for a in replays}
    sent = {}

    job_id = api.submit(task_job({"t": sleeper(3)}, name="during-fuzz"))
    for actor, endpoint, port in (("discovery", system.discovery_endpoint, system.discovery.port),
                                  ("jobmanager", system.jobmanager_hint_endpoint, system.jobmanager.hint_port)):
        frames, valid = _fuzz_corpus(system.token(), actor, node, rng)
        p = Pusher(endpoint)
        for f in frames:
            if isinstance(f, list):
                p.sock.send_multipart(f)
            else:
                p.send(f)
        p.send(valid)  # accepted once (a hint nobody acts on) ...
        for _ in range(50):  # ... then replayed
            p.send(valid)
        p.close()
        replays[actor] = 50
        sent[actor] = len(frames)
        _oversized(endpoint, system.zmq.max_frame_bytes)
        _tcp_garbage(port, rng)
    _tcp_garbage(system.globalmanager.pub_port, rng)  # the GM's PUB socket only ever reads subscriptions

    for actor in replays:
        wait_for(f"{actor} to refuse the 50 replays",
                 lambda a=actor: _counter(system, a, direction="in", kind="hint", outcome="replayed")
                 >= replayed_before[a] + replays[a], 60)
        rejected = _counter(system, actor, direction="in", outcome="rejected") - rejected_before[actor]
        # Every fuzz frame is refused (stale ones count as "stale"); none is accepted as something else.
        assert rejected >= sent[actor] - 40, (actor, rejected, sent[actor])
    job = api.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    assert job["state"] == "COMPLETED", job
    assert _pids(system) == before, "an actor died or was restarted during the fuzz"


def test_worker_sub_path_takes_only_the_globalmanagers_dispatch_for_its_own_node(system: Config) -> None:
    """The Worker's SUB socket connects out to the GM; a forger cannot bind the GM's port while it runs,
    so the decode path is fuzzed here through a real PUB socket, with the Worker's own keyring."""
    node = system.worker_name
    key_file = keymod.key_file(system.run_path, node)
    assert key_file.stat().st_mode & 0o777 == 0o600
    worker_keys = keymod.worker_keyring(system.run_path, node, "")  # what the Worker holds: its key file only
    squatter = zmq.Context.instance().socket(zmq.PUB)
    with pytest.raises(zmq.ZMQError):
        squatter.bind(system.globalmanager_pub_endpoint)
    squatter.close(0)

    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    rx = messaging.Receiver(endpoint, worker_keys, subscribe=node, limits=system.zmq)
    cp = Keyring.control_plane(system.token())
    top = messaging.topic(node)
    try:
        wait_for("the subscription to reach the publisher", lambda: (
            pub.send_multipart([top, _sign(cp, "dispatch", {"reason": "probe"}, "globalmanager",
                                           f"worker-{node}", 1)]),
            rx.recv(0.2))[1], 30)
        rng = random.Random(7)
        inst = os.urandom(8).hex()
        valid = _sign(cp, "dispatch", {"reason": "first"}, "globalmanager", f"worker-{node}", 1, inst)
        bad: list[bytes] = [rng.randbytes(rng.randint(0, 2000)) for _ in range(50)]
        bad += [b"[" * 40000, b"9" * 5000]
        for seq in range(1, 21):
            bad.append(_sign(Keyring.control_plane("wrong"), "dispatch", {"reason": "x"}, "globalmanager",
                             f"worker-{node}", seq))
            # another node's dispatch key, addressed to this node
            other = cp.key("globalmanager", "worker-other")
            bad.append(messaging.encode("dispatch", {"reason": "x"}, "globalmanager", other, f"worker-{node}",
                                        inst, 100 + seq))
            bad.append(_sign(cp, "dispatch", {"reason": "x"}, "globalmanager", f"worker-{node}", seq,
                             ts=time.time() - 600))
            bad.append(_sign(cp, "hint", {"reason": "x"}, "frontend", "jobmanager", seq))
        pub.send_multipart([top, valid])
        for f in bad:
            pub.send_multipart([top, f])
            pub.send_multipart([top, valid])  # replayed
        pub.send_multipart([top, _sign(cp, "dispatch", {"reason": "last"}, "globalmanager", f"worker-{node}", 2, inst)])
        got: list = []

        def took_last() -> bool:
            msg = rx.recv(0.5)
            if msg is not None:
                got.append(msg)
            return bool(got) and got[-1][1]["reason"] == "last"

        wait_for("the last dispatch", took_last, 30)
        assert [m[1]["reason"] for m in got if m[1]["reason"] != "probe"] == ["first", "last"], got
        assert all(m[0] == "dispatch" and m[2] == "globalmanager" for m in got)
        assert rx.rejected >= 2 * len(bad)
        # Over ZMQ_MAXMSGSIZE: libzmq drops that connection (a connecting socket does not reconnect after
        # such a protocol error, libzmq 4.3; only the GlobalManager can reach this socket, and its Sender
        # never sends an oversized frame). The receiver itself carries on.
        rejected = rx.rejected
        pub.send_multipart([top, b"x" * (system.zmq.max_frame_bytes + 1)])
        assert rx.recv(1.0) is None and rx.rejected == rejected
    finally:
        rx.close()
        pub.close(0)
    assert Management.Processes(system).alive("worker")


# ---- a second, real Worker whose frames the test captures -----------------------------------------
@pytest.fixture()
def captured_worker(system: Config, store, tmp_path: Path) -> Iterator[dict]:
    """A real Worker process named rswfz<slot>-a, reporting to a PULL socket of the test's own."""
    node = f"rswfz{SLOT}-a"
    port = _free_port()
    capture = zmq.Context.instance().socket(zmq.PULL)
    capture.setsockopt(zmq.LINGER, 0)
    capture.bind(f"tcp://127.0.0.1:{port}")
    keymod.write_key_file(tmp_path, node, system.token())  # what Management.py ships to a Worker, with its
    creds = credentials.read_credentials(system, "worker")  # MongoDB user (None when auth is off)
    if creds:
        credentials.write_credentials(tmp_path / "secrets" / "mongo-worker.json", creds["user"], creds["password"])
    env = {k: v for k, v in os.environ.items() if k != "RSWARM_API_TOKEN"}  # the Worker needs no API token
    env.update({"RSWARM_RUN_DIR": str(tmp_path), "RSWARM_WORKER_NAME": node, "RSWARM_DISCOVERY_PORT": str(port),
                "RSWARM_CLUSTER_ID": f"{TEST_CLUSTER}-fz",  # never sees this deployment's containers
                "RSWARM_WORKER_METRICS_PORT": "0", "RSWARM_WORKER_CORES": "0", "RSWARM_WORKER_MEMORY": "16m",
                "RSWARM_WORKER_HEARTBEAT_SECONDS": "0.5", "PYTHONPATH": str(ROOT)})
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "Worker"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for(f"{node} to register", lambda: store.workers.get(node), 60)
        store.workers.set_drain(node, True)  # no job is ever placed on it
        yield {"node": node, "proc": proc, "capture": capture, "log": tmp_path / "worker.log"}
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log.close()
        capture.close(0)
        store.workers.col.delete_one({"_id": node})


def _capture_heartbeats(cw: dict, cp: Keyring, n: int) -> list[bytes]:
    out: list[bytes] = []

    def more() -> bool:
        while cw["capture"].poll(100):
            frame = cw["capture"].recv()
            if messaging.decode(frame, cp, "discovery").kind == "heartbeat":
                out.append(frame)
        return len(out) >= n

    wait_for(f"{n} heartbeats of {cw['node']}", more, 60)
    return out


def test_replayed_heartbeat_is_ignored_and_a_stopped_node_still_goes_down(system: Config, store,
                                                                         captured_worker: dict) -> None:
    node = captured_worker["node"]
    cp = Keyring.control_plane(system.token())
    frames = _capture_heartbeats(captured_worker, cp, 3)
    os.kill(captured_worker["proc"].pid, signal.SIGKILL)  # the node is gone; only its frames remain
    captured_worker["proc"].wait(10)
    h0 = store.workers.get(node)["heartbeat_at"]
    replayed0 = _counter(system, "discovery", direction="in", kind="heartbeat", outcome="replayed")
    p = Pusher(system.discovery_endpoint)
    try:
        p.send(*frames)  # delivered once, late but genuine: accepted
        wait_for("the genuine heartbeats to be applied", lambda: store.workers.get(node)["heartbeat_at"] > h0, 30)
        p.send(*frames)  # the same frames again
        wait_for("Discovery to refuse the replays", lambda: _counter(
            system, "discovery", direction="in", kind="heartbeat", outcome="replayed") >= replayed0 + len(frames), 30)
        last = store.workers.get(node)["heartbeat_at"]

        def down_while_replaying() -> bool:
            p.send(*frames)
            doc = store.workers.get(node)
            assert doc["heartbeat_at"] == last, "a replayed heartbeat moved the node's heartbeat"
            return doc["state"] == "DOWN"

        wait_for(f"{node} to go DOWN while its heartbeats are replayed", down_while_replaying,
                 system.discovery.heartbeat_timeout_seconds + 60, interval=0.5)
    finally:
        p.close()


def test_report_signed_with_one_nodes_key_naming_another_node_is_ignored(system: Config, api: Api, store) -> None:
    victim = system.worker_name
    job_id = api.submit(task_job({"t": sleeper(120)}, name="victim"))
    task = api.wait_tasks(job_id, "RUNNING", timeout=60)["tasks"]["t"]
    assert task["node"] == victim
    master = system.token()
    attacker = f"rswfz{SLOT}-b"
    a_keys = Keyring.worker(attacker, node_key(master, attacker))  # exactly what node A's Worker holds
    body = {"job_id": job_id, "task": "t", "attempt": task["attempt"], "state": "FAILED", "node": victim,
            "at": time.time(), "reason": "forged"}
    rejected0 = _counter(system, "discovery", direction="in", kind="invalid", outcome="rejected")
    forged = [_sign(a_keys, "task_status", body, f"worker-{attacker}", "discovery", seq) for seq in range(1, 11)]
    # A's key under B's name: the MAC is checked with B's key, so it fails.
    a_key = a_keys.key(f"worker-{attacker}", "discovery")
    forged += [messaging.encode("task_status", body, f"worker-{victim}", a_key, "discovery", os.urandom(8).hex(), s)
               for s in range(1, 11)]
    forged += [_sign(a_keys, "heartbeat", {"node": victim, "at": time.time()}, f"worker-{attacker}", "discovery", s)
               for s in range(20, 30)]
    p = Pusher(system.discovery_endpoint)
    try:
        p.send(*forged)
        wait_for("Discovery to refuse the forged reports", lambda: _counter(
            system, "discovery", direction="in", kind="invalid", outcome="rejected") >= rejected0 + len(forged), 30)
        doc = store.jobs.get(job_id)["tasks"]["t"]
        assert doc["state"] == "RUNNING" and doc.get("reason") != "forged", doc
        assert "FAILED" not in doc.get("state_times", {})
        # The same report signed with B's own key is applied: the forged ones failed only for their key.
        b_keys = Keyring.worker(victim, node_key(master, victim))
        p.send(_sign(b_keys, "task_status", body, f"worker-{victim}", "discovery", 1))
        wait_for("the genuine report to be applied",
                 lambda: store.jobs.get(job_id)["tasks"]["t"]["state"] == "FAILED", 30)
    finally:
        p.close()


def test_report_signed_by_a_node_about_a_task_placed_on_another_node_is_not_applied(system: Config, api: Api,
                                                                                     store) -> None:
    """Node A's genuine key, naming A itself, but about B's task: the frame is authentic, the claim is not."""
    victim = system.worker_name
    job_id = api.submit(task_job({"t": sleeper(120)}, name="victim2"))
    task = api.wait_tasks(job_id, "RUNNING", timeout=60)["tasks"]["t"]
    assert task["node"] == victim
    master = system.token()
    attacker = f"rswfz{SLOT}-c"
    a_keys = Keyring.worker(attacker, node_key(master, attacker))
    b_keys = Keyring.worker(victim, node_key(master, victim))

    def body(state: str, node: str, reason: str, code: int) -> dict:
        return {"job_id": job_id, "task": "t", "attempt": task["attempt"], "state": state, "node": node,
                "at": time.time(), "reason": reason, "exit_code": code}

    p = Pusher(system.discovery_endpoint)
    try:
        p.send(_sign(a_keys, "task_status", body("FAILED", attacker, "forged", 1), f"worker-{attacker}",
                     "discovery", 1))
        # Then B's own report on the same socket, after it: once it is applied, the forged one was handled
        # first. Had the forged FAILED been applied, this COMPLETED could not move the task any more.
        p.send(_sign(b_keys, "task_status", body("COMPLETED", victim, "genuine", 0), f"worker-{victim}",
                     "discovery", 1))
        wait_for("B's own report to be applied", lambda: store.jobs.get(job_id)["tasks"]["t"]["state"] != "RUNNING", 30)
        t = store.jobs.get(job_id)["tasks"]["t"]
        assert t["state"] == "COMPLETED" and t["reason"] == "genuine" and t["exit_code"] == 0, t
        assert "FAILED" not in t.get("state_times", {}), t
        assert store.events.col.find_one({"job_id": job_id, "kind": "task_state", "reason": "forged"}) is None
    finally:
        p.close()
