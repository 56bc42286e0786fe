"""`manage.py push_check [--provider apns|fcm] [--token T] [--app A]`: one test push with the
configured credentials, and the provider's answer in an operator's words.

Without --token a made-up device token is used: Apple and Google check the credentials before
the token, so "your credentials work, the token is unknown" is the answer a good configuration
gets. With a real phone's token, the phone shows the test notification.
"""

import asyncio
import secrets
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from delivery.apns import ApnsSender
from delivery.fcm import FcmSender
from delivery.outcomes import SendResult, Verdict
from delivery.types import Delivery

DEFAULT_APP = "org.zulip.Zulip"
TITLE = "Push check"
BODY = "A test notification from the push bouncer."

# What each provider's refusal of our own credentials or set-up means, and what to do about it.
ADVICE = {
    "InvalidProviderToken": "Apple refused the signing key: check APNS_TOKEN_KEY_ID and "
    "APNS_TEAM_ID against the .p8 key in Apple's developer account.",
    "ExpiredProviderToken": "Apple says the provider token is too old: check the machine's "
    "clock (NTP).",
    "MissingProviderToken": "Apple got no credentials: configure APNS_TOKEN_KEY_FILE "
    "(with APNS_TOKEN_KEY_ID, APNS_TEAM_ID) or APNS_CERT_FILE.",
    "BadCertificate": "Apple refused the certificate (APNS_CERT_FILE): it is expired, revoked "
    "or not a push certificate.",
    "BadCertificateEnvironment": "The certificate is for the other APNs environment: check "
    "APNS_SANDBOX.",
    "TopicDisallowed": "The key or certificate may not send to this app (--app): it belongs to "
    "another team or bundle id.",
    "BadTopic": "Apple does not accept this app id as a topic (--app).",
    "DeviceTokenNotForTopic": "The token belongs to another app than --app.",
    "BadEnvironmentKeyInToken": "The key is for the other APNs environment: check APNS_SANDBOX.",
    # The bouncer's own names for faults found before anything was sent (delivery/).
    "NoCredentials": "No credentials are configured for this provider and app: APNs needs "
    "APNS_TOKEN_KEY_FILE (+ APNS_TOKEN_KEY_ID, APNS_TEAM_ID), APNS_CERT_FILE or a "
    "PUSH_APPS_FILE entry; FCM needs FCM_CREDENTIALS_FILE (docs/credentials.md).",
    "BadCredentials": "The configured credentials cannot be loaded (an unreadable or malformed "
    "file): run manage.py check.",
    "OAuthRefused": "Google's OAuth endpoint refused the service account: check "
    "FCM_CREDENTIALS_FILE (a deleted or rotated key?).",
    "UNAUTHENTICATED": "Google refused the service account's access token: check "
    "FCM_CREDENTIALS_FILE (a key that was deleted or rotated?).",
    "THIRD_PARTY_AUTH_ERROR": "Google could not reach Apple for this iOS app (its APNs key in "
    "Firebase).",
    "SENDER_ID_MISMATCH": "The token belongs to another Firebase project than "
    "FCM_CREDENTIALS_FILE's project_id.",
    "PERMISSION_DENIED": "The service account may not send messages: give it the Firebase "
    "Cloud Messaging role.",
}


def explain(provider: str, result: SendResult, *, made_up_token: bool) -> tuple[bool, str]:
    """(whether the configuration works, a sentence for the operator)."""
    who = "Apple" if provider == "apns" else "Google"
    if result.status is None and result.verdict is Verdict.CONFIG_FAULT:
        answer = f"nothing sent ({result.reason})"
    else:
        answer = f"{who} answered {result.status or 'nothing'}" + (
            f" ({result.reason})" if result.reason else ""
        )
        answer += f" in {result.latency * 1000:.0f} ms"
    if result.verdict is Verdict.DELIVERED:
        if made_up_token:
            return True, f"{answer}: the credentials work (a made-up token was accepted)."
        return True, f"{answer}: delivered; the phone should show '{TITLE}'."
    if result.verdict is Verdict.CONFIG_FAULT:
        advice = ADVICE.get(result.reason or "", "The bouncer's own set-up is wrong.")
        return False, f"{answer}: {advice}"
    if result.verdict in (Verdict.TOKEN_DEAD, Verdict.REJECTED) and made_up_token:
        return True, (
            f"{answer}: the credentials work; {who} only refused the made-up device token "
            "(pass a phone's --token to see a notification)."
        )
    if result.verdict is Verdict.TOKEN_DEAD:
        return True, f"{answer}: the credentials work, but this token is dead (app uninstalled?)."
    if result.verdict is Verdict.REJECTED:
        advice = ADVICE.get(result.reason or "", "it refused the message itself.")
        return False, f"{answer}: {advice}"
    if result.status is None:
        return False, (
            f"{answer}: {who} could not be reached. Check outbound HTTPS from this machine "
            "(firewall, proxy), the endpoint settings and PUSH_CA_FILE."
        )
    return False, f"{answer}: a temporary failure on {who}'s side; try again in a minute."


class Command(BaseCommand):
    help = "Send one test push with the configured credentials and explain the answer."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--provider", choices=["apns", "fcm"], help="default: both")
        parser.add_argument("--token", help="a phone's device token (default: a made-up one)")
        parser.add_argument("--app", default=DEFAULT_APP, help="the iOS app id (APNs topic)")

    def handle(self, *args: Any, **options: Any) -> None:
        providers = [options["provider"]] if options["provider"] else ["apns", "fcm"]
        if options["token"] and len(providers) > 1:
            raise CommandError("--token belongs to one provider: add --provider apns or fcm")
        failed = []
        for provider in providers:
            made_up = not options["token"]
            token = options["token"] or self._made_up_token(provider)
            result = asyncio.run(self._send(provider, token, options["app"]))
            works, sentence = explain(provider, result, made_up_token=made_up)
            label = "APNs" if provider == "apns" else "FCM"
            self.stdout.write(f"{label}: {'OK' if works else 'PROBLEM'}. {sentence}")
            if not works:
                failed.append(label)
        if failed:
            raise CommandError(f"{' and '.join(failed)} cannot deliver; see above.")

    @staticmethod
    def _made_up_token(provider: str) -> str:
        return (
            secrets.token_hex(32) if provider == "apns" else f"push-check-{secrets.token_hex(16)}"
        )

    @staticmethod
    async def _send(provider: str, token: str, app_id: str) -> SendResult:
        # The production senders, on a loop of their own for this one message.
        if provider == "apns":
            apns = ApnsSender()
            try:
                return await apns.send(
                    Delivery.apns(
                        index=0,
                        device_id=0,
                        token=token,
                        app_id=app_id,
                        body={"aps": {"alert": {"title": TITLE, "body": BODY}}},
                        priority=10,
                        push_type="alert",
                        expiration=None,
                    )
                )
            finally:
                await apns.close()
        fcm = FcmSender()
        try:
            return await fcm.send(
                Delivery.fcm(
                    index=0,
                    device_id=0,
                    token=token,
                    data={"event": "test", "body": BODY},
                    priority="high",
                )
            )
        finally:
            await fcm.close()
