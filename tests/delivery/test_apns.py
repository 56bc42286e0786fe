"""The APNs sender against the fake APNs over TLS HTTP/2 (JWT verified at the fake)."""

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
from pytest_django.fixtures import Settings

from delivery.apns import ApnsSender
from delivery.outcomes import SendResult, Verdict
from delivery.types import Delivery
from tests.fakes.apns import Answer, FakeApns, SigningKey
from tests.fakes.tls import loopback_tls

TOKEN = "c0ffee" * 10 + "abcd"


def message(token: str = TOKEN, app_id: str = "org.zulip.Zulip", **fields: Any) -> Delivery:
    values: dict[str, Any] = {
        "index": 0,
        "device_id": 1,
        "token": token,
        "app_id": app_id,
        "body": {"push_key_id": 10, "encrypted_data": "abc", "aps": {"mutable-content": 1}},
        "priority": 10,
        "push_type": "alert",
        "expiration": None,
    }
    values.update(fields)
    return Delivery.apns(**values)


def send_all(messages: list[Delivery], **sender_options: float) -> list[SendResult]:
    async def run() -> list[SendResult]:
        sender = ApnsSender(**sender_options)
        try:
            return list(await asyncio.gather(*(sender.send(m) for m in messages)))
        finally:
            await sender.close()

    return asyncio.run(run())


def test_a_delivery_carries_zulips_headers_and_a_verified_jwt(
    apns_settings: dict[str, str], fake_apns: FakeApns, apns_key: SigningKey
) -> None:
    [result] = send_all([message()])
    assert result.verdict == Verdict.DELIVERED
    assert result.status == 200
    [received] = fake_apns.requests_for(TOKEN)
    assert received.headers["apns-topic"] == "org.zulip.Zulip"
    assert received.headers["apns-priority"] == "10"
    assert received.headers["apns-push-type"] == "alert"
    assert "apns-expiration" not in received.headers
    assert received.headers["apns-id"] == result.upstream_id
    assert received.body == {
        "push_key_id": 10,
        "encrypted_data": "abc",
        "aps": {"mutable-content": 1},
    }
    assert received.jwt is not None
    claims = jwt.decode(received.jwt, apns_key.public_key, algorithms=["ES256"])
    assert claims["iss"] == apns_key.team_id
    assert jwt.get_unverified_header(received.jwt)["kid"] == apns_key.key_id


def test_legacy_messages_have_an_expiration_and_no_priority_or_push_type(
    apns_settings: dict[str, str], fake_apns: FakeApns
) -> None:
    import time

    expiration = int(time.time()) + 86400
    send_all([message(priority=None, push_type=None, expiration=expiration)])
    [received] = fake_apns.requests_for(TOKEN)
    assert abs(int(received.headers["apns-expiration"]) - expiration) <= 2
    assert "apns-priority" not in received.headers
    assert "apns-push-type" not in received.headers


def test_one_jwt_is_reused_across_requests_and_connections(
    apns_settings: dict[str, str], fake_apns: FakeApns
) -> None:
    send_all([message(token=f"{i:064x}") for i in range(300)])
    assert len({r.jwt for r in fake_apns.received}) == 1


@pytest.mark.parametrize(
    ("status", "reason", "verdict"),
    [
        (410, "Unregistered", Verdict.TOKEN_DEAD),
        (400, "BadDeviceToken", Verdict.TOKEN_DEAD),
        (400, "DeviceTokenNotForTopic", Verdict.TOKEN_DEAD),
        (429, "TooManyRequests", Verdict.RETRY),
        (500, "InternalServerError", Verdict.RETRY),
        (503, "ServiceUnavailable", Verdict.RETRY),
        (403, "InvalidProviderToken", Verdict.CONFIG_FAULT),
        (400, "TopicDisallowed", Verdict.CONFIG_FAULT),
        (400, "BadTopic", Verdict.CONFIG_FAULT),
        (413, "PayloadTooLarge", Verdict.REJECTED),
        (400, "SomethingNew", Verdict.REJECTED),
        (503, "SomethingNewer", Verdict.RETRY),
    ],
)
def test_each_apns_answer_is_classified(
    apns_settings: dict[str, str], fake_apns: FakeApns, status: int, reason: str, verdict: Verdict
) -> None:
    fake_apns.script(TOKEN, Answer(status, reason))
    [result] = send_all([message()])
    assert (result.verdict, result.status, result.reason) == (verdict, status, reason)


def test_a_wrong_key_is_a_configuration_fault_not_a_dead_token(
    settings: Settings, apns_settings: dict[str, str], fake_apns: FakeApns, tmp_path: Path
) -> None:
    stranger = SigningKey.generate(key_id=apns_settings["APNS_TOKEN_KEY_ID"])
    key_file = tmp_path / "other.p8"
    key_file.write_text(stranger.private_pem)
    settings.APNS_TOKEN_KEY_FILE = str(key_file)
    [result] = send_all([message()])
    assert (result.verdict, result.reason) == (Verdict.CONFIG_FAULT, "InvalidProviderToken")


def test_503_twice_then_200_is_retry_retry_delivered(
    apns_settings: dict[str, str], fake_apns: FakeApns
) -> None:
    fake_apns.script(TOKEN, Answer(503, "ServiceUnavailable"), Answer(503, "ServiceUnavailable"))
    verdicts = [send_all([message()])[0].verdict for _ in range(3)]
    assert verdicts == [Verdict.RETRY, Verdict.RETRY, Verdict.DELIVERED]


def test_a_stream_apple_never_answers_times_out_as_retry(
    apns_settings: dict[str, str], fake_apns: FakeApns
) -> None:
    fake_apns.script(TOKEN, Answer(hang=True))
    [hung, fine] = send_all([message(), message(token="ab" * 32)], request_timeout=0.5)
    assert (hung.verdict, hung.reason) == (Verdict.RETRY, "Timeout")
    assert hung.latency < 2
    assert fine.verdict == Verdict.DELIVERED


def test_goaway_mid_batch_loses_nothing(apns_settings: dict[str, str], fake_apns: FakeApns) -> None:
    fake_apns.goaway_after = 20
    fake_apns.latency_ms = (5, 10)
    tokens = [f"{i:064x}" for i in range(60)]
    results = send_all([message(token=t) for t in tokens])
    assert all(r.verdict == Verdict.DELIVERED for r in results), [r.reason for r in results]
    assert fake_apns.connections >= 2
    # Every token got exactly one 200, even though connections were cut under it.
    for token in tokens:
        assert [r.status for r in fake_apns.requests_for(token)].count(200) == 1


def test_two_apps_each_sign_with_their_own_key(
    settings: Settings,
    apns_settings: dict[str, str],
    fake_apns: FakeApns,
    apns_key: SigningKey,
    tmp_path: Path,
) -> None:
    second = SigningKey.generate(key_id="SECOND0001", team_id="TEAM999999")
    fake_apns.keys[second.key_id] = second
    key_file = tmp_path / "second.p8"
    key_file.write_text(second.private_pem)
    apps = tmp_path / "apps.json"
    apps.write_text(
        json.dumps(
            {
                "apns": {
                    "com.example.chat": {
                        "token_key_file": str(key_file),
                        "key_id": second.key_id,
                        "team_id": second.team_id,
                    }
                }
            }
        )
    )
    settings.PUSH_APPS_FILE = str(apps)
    results = send_all(
        [message(app_id="org.zulip.Zulip"), message(token="ab" * 32, app_id="com.example.chat")]
    )
    assert [r.verdict for r in results] == [Verdict.DELIVERED, Verdict.DELIVERED]
    kids = {
        r.headers["apns-topic"]: jwt.get_unverified_header(r.jwt or "")["kid"]
        for r in fake_apns.received
    }
    assert kids == {"org.zulip.Zulip": apns_key.key_id, "com.example.chat": second.key_id}


def test_certificate_authentication(
    settings: Settings, apns_settings: dict[str, str], tmp_path: Path
) -> None:
    client_ca = trustme.CA()
    cert = client_ca.issue_cert("bouncer.example.org")
    ca_file, cert_file = tmp_path / "client-ca.pem", tmp_path / "client.pem"
    client_ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    fake = FakeApns(client_ca_file=str(ca_file)).start()
    try:
        settings.APNS_TOKEN_KEY_FILE = ""
        settings.APNS_CERT_FILE = str(cert_file)
        settings.APNS_ENDPOINT = fake.endpoint
        [result] = send_all([message()])
        assert result.verdict == Verdict.DELIVERED
        [received] = fake.received
        assert received.jwt is None  # authenticated by the certificate alone
    finally:
        fake.stop()


def test_without_credentials_deliveries_fail_with_one_log_line_per_minute(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings.APNS_TOKEN_KEY_FILE = ""
    settings.APNS_CERT_FILE = ""
    settings.PUSH_APPS_FILE = ""
    with caplog.at_level(logging.ERROR, logger="delivery.apns"):
        results = send_all([message(token=f"{i:064x}") for i in range(5)])
    assert {(r.verdict, r.reason) for r in results} == {(Verdict.CONFIG_FAULT, "NoCredentials")}
    assert len([r for r in caplog.records if "org.zulip.Zulip" in r.getMessage()]) == 1


def test_two_hundred_messages_are_in_flight_at_once(
    apns_settings: dict[str, str], fake_apns: FakeApns
) -> None:
    # None is answered until the sender gives up on it: all 200 reaching Apple means they
    # were all in flight together, not one after another.
    tokens = [f"{i:064x}" for i in range(200)]
    for token in tokens:
        fake_apns.script(token, Answer(hang=True))
    results = send_all([message(token=t) for t in tokens], request_timeout=3.0)
    assert {r.reason for r in results} == {"Timeout"}
    assert sum(len(fake_apns.requests_for(t)) for t in tokens) == 200
    assert fake_apns.connections == 1


def test_the_ca_file_is_what_makes_the_fake_trusted(
    settings: Settings, apns_settings: dict[str, str]
) -> None:
    settings.PUSH_CA_FILE = ""
    [result] = send_all([message()])
    assert (result.verdict, result.reason) == (Verdict.RETRY, "ConnectionError")
    assert loopback_tls().ca_file.exists()
