"""`manage.py bouncer_keys generate|list|retire|unretire|import`: the bouncer's X25519 key pairs.

Every change is in the audit log, by "command bouncer_keys".
"""

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from registrations import keys
from registrations.models import AuditLog, BouncerKeyPair, acting_as


class Command(BaseCommand):
    help = "Manage the key pairs phones seal their push registrations to."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        generate = sub.add_parser("generate", help="create a key pair; prints its public key last")
        generate.add_argument(
            "--if-none",
            action="store_true",
            help="only when no active key exists; otherwise print the active one",
        )
        listing = sub.add_parser("list", help="public keys with their state (never private keys)")
        listing.add_argument("--json", action="store_true")
        retire = sub.add_parser("retire", help="refuse registrations sealed to this key from now")
        retire.add_argument("public_key")
        retire.add_argument(
            "--force",
            action="store_true",
            help="retire it even if it is the last active key (every new E2EE registration "
            "is then refused until a key is generated or unretired)",
        )
        unretire = sub.add_parser(
            "unretire", help="accept registrations sealed to a retired key again"
        )
        unretire.add_argument("public_key")
        imported = sub.add_parser("import", help="import Zulip's push_registration_encryption_keys")
        imported.add_argument("file", type=Path)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        actor = f"command bouncer_keys {action}" + (" --force" if options.get("force") else "")
        try:
            with acting_as(actor):
                self._act(action, options)
        except keys.KeyPairError as e:
            raise CommandError(str(e)) from None

    def _act(self, action: str, options: dict[str, Any]) -> None:
        if action == "generate":
            self._generate(if_none=options["if_none"])
        elif action == "list":
            self._list(as_json=options["json"])
        elif action == "retire":
            self._retire(options["public_key"], force=options["force"])
        elif action == "unretire":
            self._unretire(options["public_key"])
        elif action == "import":
            self._import(options["file"])

    def _retire(self, public_key: str, *, force: bool) -> None:
        active = {k.public_key for k in keys.list_keys() if k.state == "active"}
        if active == {public_key} and not force:
            raise CommandError(
                f"{public_key} is the last active key: retiring it would refuse every new E2EE "
                "registration. Generate its successor first (bouncer_keys generate), or pass "
                "--force if that is what you want."
            )
        pair = keys.retire_key(public_key=public_key)
        self.stdout.write(f"Retired {pair.public_key} at {pair.retired_at:%Y-%m-%d %H:%M:%S %Z}")

    def _unretire(self, public_key: str) -> None:
        # The inverse of keys.retire_key, for a key retired by mistake or too early: the
        # conditional update makes a repeat change nothing and log nothing.
        with transaction.atomic():
            if not BouncerKeyPair.objects.filter(public_key=public_key).exists():
                raise CommandError(f"No key pair found with public key {public_key}")
            restored = BouncerKeyPair.objects.filter(
                public_key=public_key, retired_at__isnull=False
            ).update(retired_at=None)
            if restored:
                AuditLog.objects.create(
                    event_type=AuditLog.Event.BOUNCER_KEY_UNRETIRED,
                    extra_data={"public_key": public_key},
                )
        if restored:
            self.stdout.write(
                f"{public_key} is active again: registrations sealed to it are accepted"
            )
        else:
            self.stdout.write(f"{public_key} is already active")

    def _generate(self, *, if_none: bool) -> None:
        if if_none:
            existing = keys.active_key()
            if existing is not None:
                self.stdout.write("Bouncer public key (apps seal registrations to it):")
                self.stdout.write(existing.public_key)
                return
        pair = keys.generate_key()
        self.stdout.write("New bouncer key pair; public key (apps seal registrations to it):")
        self.stdout.write(pair.public_key)

    def _list(self, *, as_json: bool) -> None:
        rows = keys.list_keys()
        if as_json:
            self.stdout.write(
                json.dumps(
                    [
                        {
                            "public_key": row.public_key,
                            "state": row.state,
                            "origin": row.origin,
                            "created": row.created.isoformat() if row.created else None,
                            "retired_at": row.retired_at.isoformat() if row.retired_at else None,
                        }
                        for row in rows
                    ],
                    indent=2,
                )
            )
            return
        for row in rows:
            created = f"{row.created:%Y-%m-%d %H:%M}" if row.created else "-"
            retired = f"{row.retired_at:%Y-%m-%d %H:%M}" if row.retired_at else "-"
            self.stdout.write(
                f"{row.public_key}  {row.state:<7}  {row.origin:<11}  "
                f"created {created}  retired {retired}"
            )

    def _import(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CommandError(f"Cannot read {path}: {e}") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise CommandError(f"{path} is not a JSON object of public key -> private key")
        imported = keys.import_keys(keys=data)
        for pair in imported:
            self.stdout.write(f"Imported {pair.public_key}")
        self.stdout.write(f"{len(imported)} imported, {len(data) - len(imported)} already present")
