from django.apps import AppConfig


class RegistrationsConfig(AppConfig):
    name = "registrations"

    def ready(self) -> None:
        from delivery.batches import register_protocol
        from registrations.notify import PROTOCOL, expire_dead

        register_protocol(PROTOCOL, on_dead=expire_dead)
