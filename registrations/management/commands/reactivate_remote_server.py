"""`manage.py reactivate_remote_server UUID`: undo a server's deactivation."""

import uuid
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from bouncer.errors import BouncerError
from registrations import services
from registrations.models import RemoteZulipServer, acting_as


class Command(BaseCommand):
    help = "Reactivate a deactivated Zulip server registration."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("uuid", help="the server's zulip_org_id")

    def handle(self, *args: Any, **options: Any) -> None:
        with acting_as("command reactivate_remote_server"):  # names the command in the audit log
            self._handle(**options)

    def _handle(self, **options: Any) -> None:
        try:
            server = RemoteZulipServer.objects.get(uuid=uuid.UUID(options["uuid"]))
        except (ValueError, RemoteZulipServer.DoesNotExist):
            raise CommandError(f"No server with zulip_org_id {options['uuid']}") from None
        if not server.deactivated:
            self.stdout.write(f"{server.hostname} is already active.")
            return
        try:
            services.reactivate_server(server=server)
        except BouncerError as e:
            raise CommandError(e.msg) from None
        self.stdout.write(f"Reactivated {server.hostname} ({server.uuid}).")
