"""`manage.py add_remote_server`: pre-register a Zulip server (for closed registration)."""

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from bouncer.errors import BouncerError
from registrations import services
from registrations.models import acting_as


class Command(BaseCommand):
    help = "Add a Zulip server that may then register (its zulip_org_id and zulip_org_key)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--uuid", required=True, help="the server's zulip_org_id")
        parser.add_argument("--key", required=True, help="the server's zulip_org_key (64 chars)")
        parser.add_argument("--hostname", required=True)
        parser.add_argument("--email", required=True, help="the server administrator's address")

    def handle(self, *args: Any, **options: Any) -> None:
        with acting_as("command add_remote_server"):  # names the command in the audit log
            self._handle(**options)

    def _handle(self, **options: Any) -> None:
        try:
            services.add_server(
                zulip_org_id=options["uuid"],
                key=options["key"],
                hostname=options["hostname"],
                contact_email=options["email"],
            )
        except BouncerError as e:
            raise CommandError(e.msg) from None
        self.stdout.write(
            f"Added {options['hostname']} ({options['uuid']}); its key is stored hashed."
        )
