"""A Matrix delivery crosses the broker as JSON like any other; a Zulip one is unchanged."""

import json

from delivery.types import Batch, Delivery


def batch(*deliveries: Delivery) -> Batch:
    return Batch(
        id="b",
        attempt=1,
        tenant="matrix:127.0.0.1",
        server_id=0,
        realm_id=None,
        protocol="matrix",
        give_up_at=0.0,
        deliveries=list(deliveries),
    )


def test_a_matrix_batch_round_trips_with_its_topic_and_fcm_options() -> None:
    original = batch(
        Delivery.apns(
            index=0,
            device_id=0,
            token="ab" * 32,
            app_id="matrix:com.example.app.ios",
            topic="com.example.app",
            body={"aps": {"badge": 1}},
            priority=10,
            push_type=None,
            expiration=None,
        ),
        Delivery.fcm(
            index=1,
            device_id=0,
            token="fcm",
            data={"room_id": "!r"},
            priority="high",
            app_id="matrix:com.example.app.android",
            fcm_options='{"apns":{"payload":{}}}',
        ),
    )

    assert Batch.from_json(json.loads(json.dumps(original.to_json()))) == original


def test_deliveries_without_the_newer_fields_are_sent_as_before() -> None:
    zulip = Delivery.fcm(index=0, device_id=7, token="t", data={"k": "v"}, priority="high")

    [sent] = batch(zulip).to_json()["deliveries"]

    # What a worker older than these fields can read.
    assert "topic" not in sent
    assert "fcm_options" not in sent
    assert Batch.from_json(batch(zulip).to_json()).deliveries == [zulip]
