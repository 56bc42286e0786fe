import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bouncer.settings")

app = Celery("bouncer")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
