"""The agent's reconcile logic against a fake kernel (no namespaces): what it creates, deletes, reports."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from Worker.epm import agent as agent_mod
from Worker.epm.kernel import EvmError, Found, Link, Scan
from Worker.epm_link import EpmLink, desired_doc, parse_report


class FakeKernel:
    def __init__(self) -> None:
        self.present: set[int] = set()
        self.broken: set[int] = set()
        self.fail: set[int] = set()
        self.created: list[int] = []
        self.destroyed: list[list[int]] = []
        self.busy: tuple[str, float] | None = None
        self.shared_dropped = 0

    def scan(self) -> Scan:
        out = Scan(shared_bridge=7)
        for s in self.present:
            out.evms[s] = Found(ns=True, veth=Link(s, True, 7, 0))
        for s in self.broken:
            out.evms[s] = Found(ns=True)  # a namespace without its veth: half made
        return out

    def host_info(self) -> dict[str, str]:
        return {"ip": "10.230.0.2", "mac": "02:42:0a:e6:00:02", "name": "epm"}

    def create(self, seq: int, ip: str, mac: str, prefix: int, gateway: str, devices: str,
               lean_master: int | None = None) -> None:
        if seq in self.fail:
            raise EvmError("OSError: [Errno 12] Cannot allocate memory")
        self.present.add(seq)
        self.created.append(seq)

    def destroy(self, seqs: list[int], scan: Scan | None = None) -> None:
        self.destroyed.append(list(seqs))
        self.present -= set(seqs)
        self.broken -= set(seqs)

    def drop_shared_bridge(self) -> None:
        self.shared_dropped += 1


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.link = EpmLink(tmp, "epm")
        self.link.open({})
        self.kernel = FakeKernel()
        self.evms: dict[int, list[Any]] = {}
        self.rates: dict[str, Any] = {}
        self.drain = False
        self.write()
        self.agent = agent_mod.Agent(str(self.link.dir), self.kernel)  # type: ignore[arg-type]

    def write(self) -> None:
        records = [{"seq": s, "ip": f"10.0.{s // 250}.{s % 250 + 2}",
                    "mac": f"02:00:00:00:{s // 256:02x}:{s % 256:02x}", "batch": v[0], "state": v[1],
                    "delete_requested": v[2]} for s, v in sorted(self.evms.items())]
        cfg = {"devices": "lean", "prefix": 16, "gateway": "10.0.0.1"}
        self.link.write_desired(desired_doc("j", "a", 0, "c", cfg, records, self.rates, self.drain, 20.0))
        time.sleep(0.002)  # a distinct mtime for the agent's change check

    def want(self, seqs: range | list[int], state: str = "PENDING", batch: str = "b0", delete: bool = False) -> None:
        for s in seqs:
            self.evms[s] = [batch, state, delete]
        self.write()

    def step(self) -> None:
        self.agent.refresh()
        self.agent.step()
        assert self.agent.reporter is not None
        self.agent.reporter.flush()

    def reports(self) -> list[dict[str, Any]]:
        return [parse_report(d) for d in self.link.receive()]

    def items(self) -> list[list[Any]]:
        return [it for r in self.reports() for it in r.get("items", [])]


@pytest.fixture()
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def run_until_idle(h: Harness, passes: int = 50) -> None:
    for _ in range(passes):
        h.step()
        if h.agent.queued == 0:
            return


def test_creates_what_is_wanted_and_reports_ready_with_both_times(h: Harness) -> None:
    h.want(range(1, 6))
    h.agent.start()
    run_until_idle(h)
    assert h.kernel.present == {1, 2, 3, 4, 5}
    items = h.items()
    assert sorted(i[0] for i in items) == [1, 2, 3, 4, 5]
    for _seq, state, times, ms, err in items:
        assert state == "READY" and times["DEPLOYING"] <= times["READY"] and ms is not None and err is None


def test_removes_what_should_not_exist_and_reports_deleted(h: Harness) -> None:
    h.kernel.present = {1, 2, 3, 9}  # 9: its record is gone (DELETED)
    h.want([1, 2, 3], state="READY")
    h.agent.start()
    h.step()
    assert h.kernel.present == {1, 2, 3}
    h.want([2], state="READY", delete=True)
    h.step()
    assert h.kernel.present == {1, 3}
    states = {(i[0], i[1]) for i in h.items()}
    assert {(9, "DELETED"), (2, "DELETED")} <= states


def test_rolls_back_half_made_evms_at_start_and_recreates_them(h: Harness) -> None:
    h.kernel.present = {1}
    h.kernel.broken = {2, 3}
    h.want([1, 2, 3], state="DEPLOYING")
    h.agent.start()
    assert [2, 3] in h.kernel.destroyed
    run_until_idle(h)
    assert h.kernel.present == {1, 2, 3} and h.kernel.created == [2, 3]


def test_failed_creation_is_reported_once_and_not_retried_by_the_same_agent(h: Harness) -> None:
    h.kernel.fail = {2}
    h.want([1, 2, 3])
    h.agent.start()
    run_until_idle(h)
    run_until_idle(h)
    items = h.items()
    errors = [i for i in items if i[1] == "ERROR"]
    assert len(errors) == 1 and errors[0][0] == 2 and "Cannot allocate memory" in errors[0][4]
    assert h.kernel.present == {1, 3}


def test_lagging_records_are_reported_again(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    h.want([1, 2])
    h.agent.start()
    run_until_idle(h)
    assert len(h.items()) == 2
    h.step()
    assert h.items() == []  # MongoDB may just not have caught up: no repeat before RESEND_SECONDS
    monkeypatch.setattr(agent_mod, "RESEND_SECONDS", 0.0)
    h.want([1], state="READY")  # 1 recorded; 2's report was lost
    h.step()
    assert [(i[0], i[1]) for i in h.items()] == [(2, "READY")]


def test_drain_removes_everything_without_closing_records(h: Harness) -> None:
    h.want(range(1, 11), state="READY")
    h.kernel.present = set(range(1, 11))
    h.agent.start()
    h.drain = True
    h.write()
    h.step()
    assert h.kernel.present == set()
    reports = h.reports()
    assert not [i for r in reports for i in r.get("items", [])]
    h.agent.last_status = 0.0
    h.step()
    status = [r["status"] for r in h.reports() if "status" in r]
    assert status and status[-1]["drained"] is True and status[-1]["present"] == 0
    assert h.kernel.shared_dropped >= 1


def test_rps_batch_is_paced(h: Harness) -> None:
    h.rates = {"b0": {"kind": "rps", "rps": 20.0, "burst": 1}}
    h.want(range(1, 6))
    h.agent.start()
    h.step()
    assert len(h.kernel.present) == 1 and h.agent.next_due > time.monotonic()  # the bucket held one token
    deadline = time.monotonic() + 30
    while h.kernel.present != set(range(1, 6)) and time.monotonic() < deadline:
        time.sleep(max(0.0, h.agent.next_due - time.monotonic()))
        h.step()
    items = h.items()
    starts = sorted(i[2]["READY"] - i[3] / 1000 for i in items if i[1] == "READY")  # READY minus its duration
    assert len(starts) == 5
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.05 - 0.002
    # Those that had to wait for a token were DEPLOYING meanwhile, said once each.
    deploying = [i[0] for i in items if i[1] == "DEPLOYING"]
    assert sorted(deploying) == [2, 3, 4, 5]


def test_bad_desired_file_is_ignored(h: Harness) -> None:
    h.want([1])
    h.agent.start()
    (h.link.dir / "desired.json").write_text('{"format": 1, "evms": "everything"}')
    time.sleep(0.01)
    assert h.agent.refresh() is False
    run_until_idle(h)
    assert h.kernel.present == {1}


def test_the_desired_file_replaces_a_planted_symlink_without_following_it(tmp_path: Path) -> None:
    link = EpmLink(tmp_path, "epm")
    link.open({})
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (link.dir / "desired.json").symlink_to(victim)
    link.write_desired({"format": 1})
    assert victim.read_text() == "keep"
    assert not (link.dir / "desired.json").is_symlink()


def test_agent_datagrams_are_checked() -> None:
    from Worker.epm_link import BadReport

    ok = parse_report(b'{"format": 1, "attempt": 0, "host": {"ip": "1.2.3.4", "evil": "x"}, '
                      b'"items": [[1, "READY", {"READY": 1.5}, 2.0, null]]}')
    assert ok["host"] == {"ip": "1.2.3.4"}
    for bad in (b"not json", b'{"format": 2, "attempt": 0}', b'{"format": 1, "attempt": -1}',
                b'{"format": 1, "attempt": 0, "items": [[1, "HACKED", {}, null, null]]}',
                b'{"format": 1, "attempt": 0, "host": {"ip": 5}}'):
        with pytest.raises(BadReport):
            parse_report(bad)


def test_a_failed_deletion_is_retried_at_the_next_pass_not_fatal(h: Harness) -> None:
    h.kernel.present = {1, 2}
    h.want([1, 2], state="READY")
    h.agent.start()
    h.want([1, 2], state="READY", delete=True)
    real = h.kernel.destroy
    calls = {"n": 0}

    def flaky(seqs: list[int], scan: Scan | None = None) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(19, "No such device")
        real(seqs, scan)

    h.kernel.destroy = flaky  # type: ignore[method-assign]
    h.step()
    assert h.kernel.present == {1, 2}
    h.step()
    assert h.kernel.present == set()
    assert {(i[0], i[1]) for i in h.items()} == {(1, "DELETED"), (2, "DELETED")}


def test_a_report_datagram_never_holds_more_than_the_worker_accepts() -> None:
    from Common.evmstates import MAX_REPORT_ITEMS
    from Worker.epm import report

    assert report.MAX_ITEMS <= MAX_REPORT_ITEMS
