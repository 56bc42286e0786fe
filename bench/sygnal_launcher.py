"""Sygnal (`python -m sygnal.sygnal`) with its APNs client pointed at the benchmark's fake APNs.

Run by Sygnal's own interpreter, in its own virtualenv (bench/peers.py), never imported by the
bouncer's. Sygnal has no setting for the APNs host or the CA to trust: aioapns connects to its
protocol class's APNS_SERVER:APNS_PORT (Apple's) with the connection pool's SSL context (the
system's CAs). This sets both from the environment, then runs Sygnal unchanged:

    BENCH_APNS_HOST, BENCH_APNS_PORT   where the fake APNs listens (loopback)
    BENCH_APNS_CA_FILE                 the CA of the fakes' certificate (tests/fakes/tls.py)
    SYGNAL_CONF                        Sygnal's own configuration file
"""

import os
import runpy
from typing import Any


def point_aioapns_at_fake() -> None:
    from aioapns import connection

    host, port = os.environ["BENCH_APNS_HOST"], int(os.environ["BENCH_APNS_PORT"])
    for protocol in (
        connection.APNsProductionClientProtocol,
        connection.APNsDevelopmentClientProtocol,
    ):
        protocol.APNS_SERVER = host
        protocol.APNS_PORT = port
    ca_file = os.environ["BENCH_APNS_CA_FILE"]
    pool = connection.APNsKeyConnectionPool
    original_init = pool.__init__

    def init_trusting_fake_ca(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        # Added to the system's CAs, as an operator behind a TLS proxy would add its CA.
        self.ssl_context.load_verify_locations(cafile=ca_file)

    setattr(pool, "__init__", init_trusting_fake_ca)  # noqa: B010 - mypy forbids assigning a method


if __name__ == "__main__":
    point_aioapns_at_fake()
    runpy.run_module("sygnal.sygnal", run_name="__main__", alter_sys=True)
