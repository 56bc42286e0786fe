"""gunicorn configuration for the bouncer's web process (`gunicorn -c deploy/gunicorn.conf.py`).

A notify request waits for APNs/FCM to answer its first attempt (tens of milliseconds, at
most NOTIFY_WAIT_SECONDS), sent from the process's own event loop, so each process serves
many requests at once with threads; the numbers are overridable with GUNICORN_CMD_ARGS or
these environment variables.
"""

import os

wsgi_app = "bouncer.wsgi:application"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
# Connections each process takes off the listening socket. Above saturation, a connection
# beyond this waits unread in the kernel's queue, where load shedding (bouncer/overload.py)
# cannot see it: with gunicorn's default of 1000, an open-loop load at twice saturation
# timed out 680 of ~6,000 requests at the client's 15 s; with 5000, none did, and the excess
# was answered 503 + Retry-After after ~5 s (bench/README.md). Each connection is a file
# descriptor: the web unit raises LimitNOFILE to match.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "5000"))
# A Zulip server gives up after 15 s; a request must never outlive that by much.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
# SIGTERM: stop accepting, finish in-flight requests within this many seconds.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = 5
# No max_requests: recycling a worker closes its keep-alive connections, and a request
# already on its way over one fails with a connection error (seen in bench/; behind nginx
# that is a 502, since nginx does not retry a POST). Memory stays flat under load (bench/).
accesslog = "-"
errorlog = "-"
# The Authorization header is never logged: gunicorn's default access format omits it.
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'


def child_exit(server: object, worker: object) -> None:
    # Prometheus multi-process mode: a dead worker's gauges must not linger.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined,no-untyped-call] # gunicorn passes its Worker untyped


def worker_exit(server: object, worker: object) -> None:
    # Graceful exit (SIGTERM, or a worker that timed out): write the delivery log rows this
    # process still buffers (delivery/attemptlog.py).
    from delivery import attemptlog

    attemptlog.stop()
