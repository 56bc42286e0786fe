"""Django's PostgreSQL backend with a health check that costs no round trip.

Django checks a reused connection once per request before its first query
(CONN_HEALTH_CHECKS), by sending `SELECT 1`: one of the four round trips of a notify, and
of the eight of a registration (bench/README.md). This backend asks the connection's own
state instead: psycopg's closed and transaction status, and whether the socket has bytes
waiting. An idle PostgreSQL connection receives nothing unless the server is closing it
(a restart, a terminated backend, a dropped TCP connection: each leaves the socket
readable), so a readable idle socket means "reconnect". A server that vanished without a
word is not detected here, nor was it by `SELECT 1` (which would have waited for it).
"""

import select

from django.db.backends.postgresql import base
from psycopg import pq


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self) -> bool:
        connection = self.connection
        if connection is None or connection.closed:
            return False
        status = connection.info.transaction_status
        if status not in (pq.TransactionStatus.IDLE, pq.TransactionStatus.INTRANS):
            # Failed transaction, lost connection (UNKNOWN) or a query still running.
            return False
        poller = select.poll()
        try:
            poller.register(connection.fileno(), select.POLLIN)
            events = poller.poll(0)
        except (OSError, ValueError):
            return False
        return not events
