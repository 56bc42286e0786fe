import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bouncer.settings")

app = Celery("bouncer")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _pin_eager_mode() -> None:
    # Celery reads its configuration lazily, once; pin the one setting our code also reads
    # so both always agree on whether tasks run in-process (delivery/tasks.py).
    from django.conf import settings

    app.conf.task_always_eager = settings.CELERY_TASK_ALWAYS_EAGER
