"""Common.logs.Throttled, driven with real exceptions and real log records (a logging handler captures
them); the clock is a counter the test advances, so no test waits for wall-clock time."""

from __future__ import annotations

import logging

import pytest
from pymongo.errors import ServerSelectionTimeoutError

from Common.logs import Throttled


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def captured() -> tuple[logging.Logger, list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("test.throttled")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = Keep()
    logger.addHandler(handler)
    yield logger, records
    logger.removeHandler(handler)


def mongo_down(n: int) -> ServerSelectionTimeoutError:
    """Raise and catch the error pymongo raises when the server is away (its text changes from pass to pass)."""
    try:
        raise ServerSelectionTimeoutError(f"127.0.0.1:27117: [Errno 111] Connection refused, Timeout: {n}ms")
    except ServerSelectionTimeoutError as exc:
        return exc


def test_a_repeated_failure_logs_its_traceback_once_then_one_counted_line_per_interval(captured) -> None:
    logger, records = captured
    clock = Clock()
    t = Throttled(logger, interval=30.0, clock=clock)
    for i in range(100):  # 100 failed passes, one every 0.5 s: 50 s of outage
        t.failed(mongo_down(i), "sweep failed")
        clock.t += 0.5
    assert len(records) == 2, [r.getMessage() for r in records]
    first, second = records
    assert first.exc_info is not None and first.getMessage() == "sweep failed"
    formatted = logging.Formatter().format(first)
    assert "Traceback" in formatted and "ServerSelectionTimeoutError" in formatted
    assert second.exc_info is None and "Traceback" not in logging.Formatter().format(second)
    # The 61st failure is the first 30 s after the first line: it reports the 60 repeats since then.
    assert "(60 times in the last 30s" in second.getMessage() and "ServerSelectionTimeoutError" in second.getMessage()


def test_a_success_reports_the_count_and_the_next_failure_is_logged_in_full_again(captured) -> None:
    logger, records = captured
    clock = Clock()
    t = Throttled(logger, interval=30.0, clock=clock)
    for i in range(5):
        t.failed(mongo_down(i), "reconcile failed")
        clock.t += 1
    t.ok()
    messages = [r.getMessage() for r in records]
    assert messages == ["reconcile failed", "reconcile failed: repeated 4 more times since the last line",
                        "recovered after 5 failed passes"], messages
    t.failed(mongo_down(9), "reconcile failed")
    assert records[-1].exc_info is not None  # a new outage: its traceback again
    t.ok()
    t.ok()  # nothing failed since: silent
    assert len(records) == 4


def test_a_different_failure_is_logged_in_full_at_once_and_alternating_failures_each_only_once(captured) -> None:
    logger, records = captured
    clock = Clock()
    t = Throttled(logger, interval=30.0, clock=clock)

    def key_error() -> KeyError:
        try:
            {}["missing"]
        except KeyError as exc:
            return exc
        raise AssertionError("unreachable")

    for exc in (mongo_down(1), mongo_down(2), key_error(), mongo_down(3), key_error()):
        t.failed(exc, "pass failed")
    full = [(r.getMessage(), r.exc_info[0] if r.exc_info else None) for r in records]
    assert full == [("pass failed", ServerSelectionTimeoutError), ("pass failed", KeyError)], full
    t.ok()
    assert [r.getMessage() for r in records[2:]] == ["pass failed: repeated 2 more times since the last line",
                                                     "pass failed: repeated 1 more times since the last line",
                                                     "recovered after 5 failed passes"]


def test_the_errors_of_one_database_outage_are_one_kind_whatever_pymongo_class_and_text(captured) -> None:
    """MongoDB frozen: pymongo raises _OperationCancelled on the connection in use, then
    ServerSelectionTimeoutError (seen in a Worker's log): one traceback, not one per class."""
    from pymongo.errors import AutoReconnect, _OperationCancelled

    logger, records = captured
    t = Throttled(logger, interval=30.0, clock=Clock())
    for exc_type in (_OperationCancelled, ServerSelectionTimeoutError, AutoReconnect, ServerSelectionTimeoutError):
        try:
            raise exc_type(f"{exc_type.__name__}: 127.0.0.1:27117 timed out")
        except exc_type as exc:
            t.failed(exc, "reconcile failed")
    assert len(records) == 1 and records[0].exc_info[0] is _OperationCancelled
    t.ok()
    assert [r.getMessage() for r in records[1:]] == ["reconcile failed: repeated 3 more times since the last line",
                                                     "recovered after 4 failed passes"]
