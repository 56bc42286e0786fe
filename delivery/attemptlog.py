"""Writing the delivery log: buffered per worker process, flushed with one COPY.

A row per delivery attempt is what operators need, but one INSERT transaction per batch made
the log the single largest cost of a notification (bench/README.md: turning it off raised
throughput by ~45%). Web and worker processes therefore queue the rows and a background
thread writes whatever has accumulated every FLUSH_SECONDS in one COPY (PostgreSQL; a bulk
insert elsewhere). A graceful shutdown flushes what is left (the web server's lifespan shutdown,
Celery's shutdown signals); a process killed outright loses at most FLUSH_SECONDS of log
rows, never a delivery. In-process (make run, CELERY_TASK_ALWAYS_EAGER)
rows are written at once.
"""

import logging
import os
import queue
import threading
from datetime import datetime
from typing import Any

import psycopg
from django.conf import settings
from django.db import DatabaseError, connection

from bouncer import metrics
from delivery.models import DeliveryAttempt
from delivery.types import Batch, Delivery

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5
# Rows beyond this wait for the next flush; a flush never holds more in memory.
MAX_ROWS_PER_FLUSH = 20_000
# Rows buffered at most (PostgreSQL away): older ones are dropped and counted.
MAX_BUFFERED_ROWS = 200_000

COLUMNS = (
    "created",
    "batch_id",
    "server_id",
    "realm_id",
    "device_id",
    "protocol",
    "provider",
    "app_id",
    "outcome",
    "upstream_status",
    "reason",
    "upstream_id",
    "attempt",
    "latency_ms",
)

Row = tuple[Any, ...]


def write_rows(rows: list[Row]) -> None:
    """Insert log rows now, on this thread's database connection."""
    if not rows:
        return
    if connection.vendor == "postgresql":
        table = DeliveryAttempt._meta.db_table
        statement = f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN"
        # Django's wrapper hides psycopg's COPY; the raw cursor has it.
        with connection.cursor() as cursor, cursor.cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
        return
    DeliveryAttempt.objects.bulk_create(
        [DeliveryAttempt(**dict(zip(COLUMNS, row, strict=True))) for row in rows]
    )


class _Buffer:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self._rows: queue.SimpleQueue[Row] = queue.SimpleQueue()
        self._lock = threading.Lock()  # one flush at a time (the thread, or shutdown)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delivery-log", daemon=True)
        self._thread.start()

    def add(self, rows: list[Row]) -> None:
        for row in rows:
            self._rows.put(row)
        # Bounded: while PostgreSQL is away the oldest rows go first, counted.
        excess = self._rows.qsize() - MAX_BUFFERED_ROWS
        dropped = 0
        while excess > 0:
            try:
                self._rows.get_nowait()
            except queue.Empty:
                break
            excess -= 1
            dropped += 1
        if dropped:
            metrics.DELIVERY_LOG_ROWS_DROPPED.inc(dropped)

    def _run(self) -> None:
        # A daemon thread: a process that exits without stop() loses what is buffered.
        while not self._stopping.wait(FLUSH_SECONDS):
            self._flush_logged()
        self._flush_logged()
        connection.close()  # this thread's own; nothing else would ever close it

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)

    def _flush_logged(self) -> None:
        # The writer outlives any error: a dead writer would let rows pile up unwritten.
        try:
            self.flush()
        except Exception:
            logger.exception("Delivery log: unexpected error writing rows; writer continues")

    def flush(self) -> None:
        with self._lock:
            while True:
                rows: list[Row] = []
                while len(rows) < MAX_ROWS_PER_FLUSH:
                    try:
                        rows.append(self._rows.get_nowait())
                    except queue.Empty:
                        break
                if not rows:
                    return
                if not _write_reconnecting(rows):
                    return


def _write_reconnecting(rows: list[Row]) -> bool:
    """Write rows on this thread's connection, once more on a new one if that fails."""
    try:
        write_rows(rows)
        return True
    except (DatabaseError, psycopg.Error):
        # A connection held across a PostgreSQL restart fails only when next used: the rows
        # go over a new one.
        connection.close()
    try:
        write_rows(rows)
        return True
    except (DatabaseError, psycopg.Error) as e:
        # PostgreSQL down: the deliveries are done and reported; only their log rows are
        # lost. The next flush reconnects.
        logger.error("Delivery log: database unavailable, %d rows lost: %s", len(rows), e)
        metrics.DELIVERY_LOG_ROWS_DROPPED.inc(len(rows))
        connection.close()
        return False


_lock = threading.Lock()
_buffer: _Buffer | None = None


def _current() -> _Buffer:
    global _buffer
    with _lock:
        if _buffer is None or _buffer.pid != os.getpid():  # a forked child starts its own
            _buffer = _Buffer()
        return _buffer


def record(rows: list[Row]) -> None:
    """Log attempts: buffered in a web or worker process, written at once without a broker."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        write_rows(rows)
    else:
        _current().add(rows)


def stop() -> None:
    """Write what is buffered and end the writer thread (process shutdown); a later record()
    starts a new one."""
    global _buffer
    with _lock:
        buffer, _buffer = _buffer, None
    if buffer is not None and buffer.pid == os.getpid():
        buffer.stop()


def row(
    *,
    created: datetime,
    batch: Batch,
    delivery: Delivery,
    outcome: str,
    status: int | None,
    reason: str,
    upstream_id: str,
    latency: float,
) -> Row:
    return (
        created,
        batch.id,
        batch.server_id,
        batch.realm_id,
        delivery.device_id,
        batch.protocol,
        delivery.provider.value,
        delivery.app_id,
        outcome,
        status,
        reason[:128],
        upstream_id[:255],
        batch.attempt,
        round(latency * 1000),
    )
