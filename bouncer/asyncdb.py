"""Database access from the event loop, for the notify path.

PostgreSQL: a psycopg 3 async connection pool, plain SQL against the tables Django's models
define (autocommit: each statement is its own transaction, as the hot path needs no more).
Anything else (SQLite under `make run`): the same SQL through Django's connection in a
thread, since SQLite has no async driver worth a dependency; it is not the production path.

Statements use %s placeholders, which both psycopg and Django's cursor accept.
"""

import asyncio
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

# Connections per web process: statements on the notify path take well under a millisecond,
# so a few serve hundreds of requests in flight.
POOL_MAX_SIZE = 8
POOL_TIMEOUT_SECONDS = 5.0

Row = tuple[Any, ...]


def _conninfo() -> dict[str, Any]:
    db = settings.DATABASES["default"]
    options = dict(db.get("OPTIONS") or {})
    options.pop("pool", None)
    options.pop("server_side_binding", None)
    info: dict[str, Any] = {
        "dbname": db.get("NAME") or "",
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None,
        "port": db.get("PORT") or None,
        **options,
    }
    return {k: v for k, v in info.items() if v is not None}


def is_postgresql() -> bool:
    return "postgresql" in settings.DATABASES["default"]["ENGINE"]


class AsyncDatabase:
    def __init__(self) -> None:
        self._pool: AsyncConnectionPool[AsyncConnection[Any]] | None = None

    async def _get_pool(self) -> AsyncConnectionPool[AsyncConnection[Any]]:
        if self._pool is None:
            pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
                kwargs={**_conninfo(), "autocommit": True},
                min_size=1,
                max_size=POOL_MAX_SIZE,
                timeout=POOL_TIMEOUT_SECONDS,
                open=False,
                name="notify",
            )
            # Published before the first await, so that concurrent first requests share it.
            self._pool = pool
            await pool.open(wait=False)
        return self._pool

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Row]:
        if not is_postgresql():
            return await in_thread(_sync_fetch, sql, params)
        pool = await self._get_pool()
        async with pool.connection() as conn, conn.cursor() as cursor:
            await cursor.execute(sql, params)
            return await cursor.fetchall()

    async def execute(self, sql: str, params: Sequence[Any]) -> int:
        if not is_postgresql():
            return await in_thread(_sync_execute, sql, params)
        pool = await self._get_pool()
        async with pool.connection() as conn, conn.cursor() as cursor:
            await cursor.execute(sql, params)
            return cursor.rowcount

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


# The ORM's threads. Not asyncio.to_thread: it copies the loop's context into each call, and
# Django's per-thread connection would then be a new one every call. These threads keep theirs.
ORM_THREADS = 8
_executor = ThreadPoolExecutor(max_workers=ORM_THREADS, thread_name_prefix="orm")


async def in_thread[T](function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run blocking ORM code off the event loop, on a thread that keeps its connection."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, functools.partial(function, *args, **kwargs))


def close_thread_connections(
    executor: ThreadPoolExecutor = _executor, threads: int = ORM_THREADS
) -> None:
    """Close the database connection of every thread of a pool (the test session's end)."""
    barrier = threading.Barrier(threads, timeout=10)

    def close() -> None:
        connection.close()
        barrier.wait()  # holds this thread, so each of the others takes one of these

    for future in [executor.submit(close) for _ in range(threads)]:
        future.result()


def _sync_fetch(sql: str, params: Sequence[Any]) -> list[Row]:
    close_old_connections()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def _sync_execute(sql: str, params: Sequence[Any]) -> int:
    close_old_connections()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


_databases: dict[int, AsyncDatabase] = {}


def database() -> AsyncDatabase:
    """The pool of the running event loop (one per loop: a pool's connections belong to it)."""
    loop = asyncio.get_running_loop()
    db = _databases.get(id(loop))
    if db is None:
        db = _databases[id(loop)] = AsyncDatabase()
    return db


async def close_database() -> None:
    db = _databases.pop(id(asyncio.get_running_loop()), None)
    if db is not None:
        await db.close()
