from django.apps import AppConfig


class RegistrationsConfig(AppConfig):
    name = "registrations"

    def ready(self) -> None:
        from delivery.batches import register_protocol
        from registrations.notify import PROTOCOL, expire_dead

        register_protocol(PROTOCOL, on_dead=expire_dead)
        _publish_saved_servers_and_realms()


def _publish_saved_servers_and_realms() -> None:
    """Every saved or deleted server and realm is forgotten by the notify path's caches."""
    from django.db import transaction
    from django.db.models.signals import post_delete, post_save

    from registrations import lookups
    from registrations.models import RemoteRealm, RemoteZulipServer

    def changed(sender: object, instance: RemoteRealm | RemoteZulipServer, **_: object) -> None:
        value = instance.uuid
        transaction.on_commit(lambda: lookups.publish_change([value]))

    for model in (RemoteZulipServer, RemoteRealm):
        post_save.connect(changed, sender=model, weak=False, dispatch_uid=f"lookups-{model}")
        post_delete.connect(changed, sender=model, weak=False, dispatch_uid=f"lookups-d-{model}")
