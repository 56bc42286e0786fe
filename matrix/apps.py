from django.apps import AppConfig


class MatrixConfig(AppConfig):
    name = "matrix"

    def ready(self) -> None:
        from delivery.batches import register_protocol
        from matrix import checks, config
        from matrix.notify import PROTOCOL, report_dead

        register_protocol(PROTOCOL, on_dead=report_dead)
        config.register()
        checks.register()
