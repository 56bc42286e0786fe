"""`manage.py cleanup_legacy_registrations [--dry-run] [--batch-size N]`."""

from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from legacy import retirement
from registrations.models import RemoteZulipServer


class Command(BaseCommand):
    help = (
        "Remove legacy push tokens replaced by an E2EE registration of the same phone, and "
        "those of servers deactivated more than LEGACY_DEACTIVATED_RETENTION_DAYS ago."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="report, change nothing")
        parser.add_argument("--batch-size", type=int, default=retirement.DEFAULT_BATCH_SIZE)

    def handle(self, *args: Any, **options: Any) -> None:
        dry_run = options["dry_run"]
        report = retirement.cleanup(
            dry_run=dry_run,
            batch_size=max(options["batch_size"], 1),
            retention_days=settings.LEGACY_DEACTIVATED_RETENTION_DAYS,
        )
        verb = "would remove" if dry_run else "removed"
        servers = RemoteZulipServer.objects.in_bulk(
            set(report.moved_to_e2ee) | set(report.server_deactivated)
        )
        for label, counts in (
            ("moved to E2EE", report.moved_to_e2ee),
            ("server deactivated", report.server_deactivated),
        ):
            for server_id, count in sorted(counts.items()):
                server = servers.get(server_id)
                name = server.hostname if server else f"server {server_id}"
                self.stdout.write(f"{name}: {verb} {count} legacy token(s) ({label})")
        self.stdout.write(f"Total: {verb} {report.total} legacy token(s).")
