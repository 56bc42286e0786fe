"""`manage.py first_run --url URL`: what `make run` does before it serves, and what it prints.

A bouncer key pair if there is none, an admin account if there is none (its password
generated and printed this once, never stored in clear), then where everything is and what a
Zulip server's administrator does next.
"""

import secrets
from argparse import ArgumentParser
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from registrations import keys
from registrations.models import acting_as

ADMIN_USERNAME = "admin"


class Command(BaseCommand):
    help = "Prepare a local run (key pair, admin account) and print how to use it."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--url", required=True, help="where the bouncer will be served")

    def handle(self, *args: Any, **options: Any) -> None:
        with acting_as("command first_run"):  # names the command in the audit log
            self._handle(**options)

    def _handle(self, **options: Any) -> None:
        url = str(options["url"]).rstrip("/")
        pair = keys.active_key() or keys.generate_key()
        login = self._admin_login()
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"The bouncer:      {url}/",
                    f"Its admin:        {url}/admin/  ({login})",
                    f"Its metrics:      {url}/metrics",
                    "Its public key (the apps seal their push registrations to it):",
                    pair.public_key,
                    "",
                    "Next, on a Zulip server, in /etc/zulip/settings.py:",
                    f'    ZULIP_SERVICES_URL = "{url}"',
                    "    ZULIP_SERVICE_PUSH_NOTIFICATIONS = True",
                    "then, as the zulip user: /home/zulip/deployments/current/manage.py "
                    "register_server",
                    "(a Zulip server elsewhere needs this bouncer on a reachable address behind "
                    "TLS: docs/install.md).",
                    "",
                ]
            )
        )

    def _admin_login(self) -> str:
        users = get_user_model()
        if users.objects.filter(is_superuser=True).exists():
            return "log in with your admin account; another: manage.py createsuperuser"
        password = secrets.token_urlsafe(12)
        users.objects.create_superuser(username=ADMIN_USERNAME, email="", password=password)
        return (
            f"user {ADMIN_USERNAME}, password {password}, shown this once; "
            "change it there, or: manage.py changepassword admin"
        )
