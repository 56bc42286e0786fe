import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bouncer.settings")

app = Celery("bouncer")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _pin_eager_mode() -> None:
    # Celery reads its configuration lazily, once; pin the one setting our code also reads
    # so both always agree on whether tasks run in-process (delivery/tasks.py).
    from django.conf import settings

    app.conf.task_always_eager = settings.CELERY_TASK_ALWAYS_EAGER
    # Celery's Django fix-up closes every database connection after each task unless told
    # to reuse them: a new PostgreSQL connection per batch costs more than the batch.
    app.conf["CELERY_DB_REUSE_MAX"] = settings.DATABASES["default"]["CONN_MAX_AGE"] and 1000


@worker_ready.connect
def _serve_metrics(**kwargs: Any) -> None:
    from django.conf import settings

    if settings.WORKER_METRICS_BIND:
        from bouncer.metrics import serve_worker_metrics

        serve_worker_metrics(settings.WORKER_METRICS_BIND)


@worker_shutdown.connect
@worker_process_shutdown.connect
def _flush_delivery_log(**kwargs: Any) -> None:
    # Warm shutdown: the batches are done; their log rows are still buffered.
    from delivery import attemptlog

    attemptlog.stop()
