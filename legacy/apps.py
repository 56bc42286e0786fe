from django.apps import AppConfig


class LegacyConfig(AppConfig):
    name = "legacy"

    def ready(self) -> None:
        from delivery.batches import register_protocol
        from legacy.notify import PROTOCOL, expire_dead

        register_protocol(PROTOCOL, on_dead=expire_dead)
