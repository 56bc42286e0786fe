"""Zulip's command name and flags, for operators who know them (keys live in our database)."""

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from registrations import keys
from registrations.models import acting_as


class Command(BaseCommand):
    help = "Add or remove a push registration encryption key pair (Zulip-compatible flags)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--add", action="store_true", help="generate a new key pair")
        group.add_argument("--remove-key", metavar="PUBLIC_KEY", help="stop accepting this key")

    def handle(self, *args: Any, **options: Any) -> None:
        with acting_as(
            "command manage_push_registration_encryption_keys"
        ):  # names the command in the audit log
            self._handle(**options)

    def _handle(self, **options: Any) -> None:
        if options["add"]:
            pair = keys.generate_key()
            # Zulip prints the private key too; here it is sealed in the database instead
            # and never shown, so it cannot end up in a terminal log.
            self.stdout.write("Added a key pair; the private key stays sealed in the database.")
            self.stdout.write(f"Public key: {pair.public_key}")
            return
        try:
            pair = keys.retire_key(public_key=options["remove_key"])
        except keys.KeyPairError as e:
            if "No key pair found" in str(e):
                raise CommandError("Error: No key pair found with the given public key.") from None
            raise CommandError(str(e)) from None
        self.stdout.write(f"Removed (retired) key pair {pair.public_key}")
