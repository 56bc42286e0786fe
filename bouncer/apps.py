from django.apps import AppConfig


class BouncerConfig(AppConfig):
    name = "bouncer"

    def ready(self) -> None:
        from bouncer import checks  # noqa: F401 - registers the system checks
        from bouncer.celery import _pin_eager_mode

        _pin_eager_mode()
