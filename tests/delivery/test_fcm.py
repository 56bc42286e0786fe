"""The FCM sender against the fake FCM and OAuth endpoint over TLS HTTP/2."""

import asyncio
import logging
import time
from pathlib import Path

import pytest
from pytest_django.fixtures import Settings

from delivery.fcm import REQUEST_TIMEOUT_SECONDS, FcmSender
from delivery.outcomes import SendResult, Verdict
from delivery.types import Delivery
from tests.fakes.fcm import FakeFcm, FcmAnswer, ServiceAccount

TOKEN = "fcm-token-" + "a" * 140


def message(token: str = TOKEN) -> Delivery:
    return Delivery.fcm(
        index=0,
        device_id=1,
        token=token,
        data={"push_key_id": "20", "encrypted_data": "x2Qe"},
        priority="high",
    )


def send_all(
    messages: list[Delivery], *, request_timeout: float = REQUEST_TIMEOUT_SECONDS
) -> list[SendResult]:
    async def run() -> list[SendResult]:
        sender = FcmSender(request_timeout=request_timeout)
        try:
            return list(await asyncio.gather(*(sender.send(m) for m in messages)))
        finally:
            await sender.close()

    return asyncio.run(run())


def test_a_message_is_data_only_with_the_android_priority(
    fcm_settings: dict[str, str], fake_fcm: FakeFcm
) -> None:
    [result] = send_all([message()])
    assert result.verdict == Verdict.DELIVERED
    assert result.upstream_id is not None
    assert result.upstream_id.startswith("projects/bouncer-test/messages/")
    assert fake_fcm.messages == [
        {
            "token": TOKEN,
            "android": {"priority": "high"},
            "data": {"push_key_id": "20", "encrypted_data": "x2Qe"},
        }
    ]


def test_the_access_token_is_fetched_once_and_reused(
    fcm_settings: dict[str, str], fake_fcm: FakeFcm
) -> None:
    send_all([message(token=f"t{i}") for i in range(50)])
    assert fake_fcm.token_requests == 1
    assert fake_fcm.delivered == 50


def test_a_token_about_to_expire_is_refreshed(
    fcm_settings: dict[str, str], fake_fcm: FakeFcm
) -> None:
    # google-auth refreshes within 3 min 45 s of expiry: a 60 s token is always stale.
    fake_fcm.expires_in = 60

    async def run() -> None:
        sender = FcmSender()
        for i in range(3):
            assert (await sender.send(message(token=f"t{i}"))).verdict == Verdict.DELIVERED
        await sender.close()

    asyncio.run(run())
    assert fake_fcm.token_requests == 3


@pytest.mark.parametrize(
    ("error", "status", "verdict"),
    [
        ("UNREGISTERED", 404, Verdict.TOKEN_DEAD),
        ("INVALID_ARGUMENT", 400, Verdict.REJECTED),
        ("SENDER_ID_MISMATCH", 403, Verdict.CONFIG_FAULT),
        ("THIRD_PARTY_AUTH_ERROR", 401, Verdict.CONFIG_FAULT),
        ("QUOTA_EXCEEDED", 429, Verdict.RETRY),
        ("INTERNAL", 500, Verdict.RETRY),
        ("UNAVAILABLE", 503, Verdict.RETRY),
    ],
)
def test_each_fcm_error_is_classified(
    fcm_settings: dict[str, str], fake_fcm: FakeFcm, error: str, status: int, verdict: Verdict
) -> None:
    fake_fcm.script(TOKEN, FcmAnswer(error=error))
    [result] = send_all([message()])
    assert (result.verdict, result.status, result.reason) == (verdict, status, error)


def test_retry_after_is_read(fcm_settings: dict[str, str], fake_fcm: FakeFcm) -> None:
    fake_fcm.script(TOKEN, FcmAnswer(error="QUOTA_EXCEEDED", retry_after="120"))
    [result] = send_all([message()])
    assert result.retry_after == 120.0


def test_a_hang_times_out_as_retry(fcm_settings: dict[str, str], fake_fcm: FakeFcm) -> None:
    fake_fcm.script(TOKEN, FcmAnswer(hang=True))
    started = time.monotonic()
    [result] = send_all([message()], request_timeout=0.5)
    assert (result.verdict, result.reason) == (Verdict.RETRY, "Timeout")
    assert time.monotonic() - started < 3


def test_a_service_account_the_token_endpoint_refuses_is_a_configuration_fault(
    settings: Settings, fcm_settings: dict[str, str], fake_fcm: FakeFcm, tmp_path: Path
) -> None:
    impostor = ServiceAccount.generate()
    bad = tmp_path / "impostor.json"
    bad.write_text(impostor.file_content(fake_fcm.token_uri))
    settings.FCM_CREDENTIALS_FILE = str(bad)
    [result] = send_all([message()])
    assert (result.verdict, result.reason) == (Verdict.CONFIG_FAULT, "OAuthRefused")
    assert fake_fcm.messages == []


def test_without_credentials_deliveries_fail_with_one_log_line(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings.FCM_CREDENTIALS_FILE = ""
    with caplog.at_level(logging.ERROR, logger="delivery.fcm"):
        results = send_all([message(token=f"t{i}") for i in range(5)])
    assert {(r.verdict, r.reason) for r in results} == {(Verdict.CONFIG_FAULT, "NoCredentials")}
    assert len(caplog.records) == 1


def test_two_hundred_sends_are_in_flight_at_once_on_one_connection(
    fcm_settings: dict[str, str], fake_fcm: FakeFcm
) -> None:
    # None is answered until the sender gives up on it: all 200 reaching Google means they
    # were all in flight together, not one after another.
    tokens = [f"t{i}" for i in range(200)]
    for token in tokens:
        fake_fcm.script(token, FcmAnswer(hang=True))
    results = send_all([message(token=t) for t in tokens], request_timeout=3.0)
    assert {r.reason for r in results} == {"Timeout"}
    assert sum(len(fake_fcm.messages_for(t)) for t in tokens) == 200
    assert fake_fcm.connections == 2  # one for OAuth, one carrying all 200 messages


def test_goaway_mid_batch_loses_nothing(fcm_settings: dict[str, str], fake_fcm: FakeFcm) -> None:
    """Streams the server never processed (beyond GOAWAY's last stream) are sent again once,
    on a new connection, within the same send."""
    fake_fcm.goaway_after = 20
    fake_fcm.latency_ms = (5, 10)
    tokens = [f"t{i}" for i in range(60)]
    results = send_all([message(token=t) for t in tokens])
    assert all(r.verdict == Verdict.DELIVERED for r in results), [r.reason for r in results]
    assert fake_fcm.connections >= 3  # OAuth, the cut connection, its replacement
    # Every token answered 200 exactly once, though its connection was cut under it.
    assert fake_fcm.answered == dict.fromkeys(tokens, 1)
