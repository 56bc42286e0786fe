"""The delivery-log buffer: bounded while its writer cannot write."""

import queue

from prometheus_client import REGISTRY

from delivery import attemptlog

DROPPED = "bouncer_delivery_log_rows_dropped_total"


def test_rows_beyond_the_bound_drop_the_oldest_and_are_counted() -> None:
    buffer = attemptlog._Buffer()
    before = REGISTRY.get_sample_value(DROPPED) or 0.0
    # The writer is mid-flush (as when PostgreSQL does not answer): nothing drains meanwhile.
    with buffer._lock:
        buffer.add([("old",)] * 10)
        buffer.add([("new",)] * attemptlog.MAX_BUFFERED_ROWS)
        assert REGISTRY.get_sample_value(DROPPED) == before + 10
        kept = []
        while True:
            try:
                kept.append(buffer._rows.get_nowait())
            except queue.Empty:
                break
    assert len(kept) == attemptlog.MAX_BUFFERED_ROWS
    assert ("old",) not in kept
    buffer.stop()
