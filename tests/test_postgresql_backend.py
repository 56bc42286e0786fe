"""The PostgreSQL backend's health check (bouncer/postgresql): no round trip, same verdicts."""

import time

import pytest
from django.db import DataError, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper

pytestmark = pytest.mark.django_db(transaction=True)


def _open_new_connection() -> BaseDatabaseWrapper:
    other = connections.create_connection("default")
    other.ensure_connection()
    return other


def test_a_live_idle_connection_is_usable_without_a_query() -> None:
    connection.ensure_connection()
    assert connection.is_usable()
    # The check sends nothing: the server saw no statement from it.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        [(pid,)] = cursor.fetchall()
    observer = _open_new_connection()
    try:
        with observer.cursor() as cursor:
            cursor.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])
            [(before,)] = cursor.fetchall()
            assert connection.is_usable()
            cursor.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])
            [(after,)] = cursor.fetchall()
        assert before == after == "SELECT pg_backend_pid()"
    finally:
        observer.close()


def test_a_terminated_connection_is_replaced_before_the_next_request_uses_it() -> None:
    victim = _open_new_connection()
    killer = _open_new_connection()
    try:
        with victim.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            [(pid,)] = cursor.fetchall()
        with killer.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 5
        while victim.is_usable() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not victim.is_usable()

        # A request ends (request_finished), the next one opens a cursor: the health check
        # replaces the connection instead of failing the request.
        victim.close_if_unusable_or_obsolete()
        with victim.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchall() == [(1,)]
    finally:
        victim.close()
        killer.close()


def test_a_failed_transaction_is_not_usable() -> None:
    other = _open_new_connection()
    try:
        other.set_autocommit(False)
        with pytest.raises(DataError), other.cursor() as cursor:
            cursor.execute("SELECT 1/0")
        assert not other.is_usable()
    finally:
        other.close()
