"""`manage.py bouncer_keys generate|list|retire|import`: the bouncer's X25519 key pairs."""

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from registrations import keys


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
        imported = sub.add_parser("import", help="import Zulip's push_registration_encryption_keys")
        imported.add_argument("file", type=Path)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        try:
            if action == "generate":
                self._generate(if_none=options["if_none"])
            elif action == "list":
                self._list(as_json=options["json"])
            elif action == "retire":
                pair = keys.retire_key(public_key=options["public_key"])
                self.stdout.write(
                    f"Retired {pair.public_key} at {pair.retired_at:%Y-%m-%d %H:%M:%S %Z}"
                )
            elif action == "import":
                self._import(options["file"])
        except keys.KeyPairError as e:
            raise CommandError(str(e)) from None

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
