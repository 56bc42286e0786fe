"""What travels through the engine: typed deliveries and batches (pure: no I/O).

A protocol app (Zulip E2EE, Zulip legacy; Matrix next) turns its requests into `Delivery`
values; the engine sends them, one `Sender` per provider, and settles the outcomes. A batch
crosses the broker as JSON (`to_json` / `from_json`), so every field is a JSON primitive.
"""

import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, Self


class Provider(StrEnum):
    APNS = "apns"
    FCM = "fcm"


def compact_json(value: Any) -> str:
    # As Zulip (orjson) and aioapns send it: no spaces, UTF-8 rather than \u escapes.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notification to one device token.

    `payload` is JSON text: the whole APNs body, or FCM's `data` object (string values).
    `size` is what the provider's limit counts (APNs: the body's bytes; FCM: the data's keys
    and values), measured once when the delivery is made.
    """

    index: int  # position in its request, to map outcomes back
    provider: Provider
    device_id: int
    token: str
    app_id: str
    payload: str
    size: int
    priority: str | None = None  # APNs "10" / "5" / "1"; FCM "high" / "normal"
    push_type: str | None = None  # APNs apns-push-type
    expiration: int | None = None  # APNs apns-expiration (epoch seconds)
    # APNs apns-topic when it is not `app_id` (Matrix: `app_id` names the configured app,
    # whose credentials sign, and the topic is that app's bundle id).
    topic: str | None = None
    # FCM: JSON text of further members of the message (beside token and data), e.g.
    # `apns` or `android.notification`; the delivery's priority is set into `android`.
    fcm_options: str | None = None

    @classmethod
    def apns(
        cls,
        *,
        index: int,
        device_id: int,
        token: str,
        app_id: str,
        body: dict[str, Any] | str,
        priority: int | None,
        push_type: str | None,
        expiration: int | None,
        topic: str | None = None,
    ) -> Self:
        text = body if isinstance(body, str) else compact_json(body)
        if push_type == VOIP:
            # PushKit: Apple delivers a VoIP push only to the bundle's ".voip" topic, and at
            # once (a call rings now or never).
            topic = voip_topic(topic or app_id)
            priority = VOIP_PRIORITY
        return cls(
            index=index,
            provider=Provider.APNS,
            device_id=device_id,
            token=token,
            app_id=app_id,
            payload=text,
            size=utf8_size(text),
            priority=None if priority is None else str(priority),
            push_type=push_type,
            expiration=expiration,
            topic=topic,
        )

    @classmethod
    def fcm(
        cls,
        *,
        index: int,
        device_id: int,
        token: str,
        data: dict[str, str],
        data_json: str | None = None,
        data_size: int | None = None,
        priority: str,
        app_id: str = "",
        fcm_options: str | None = None,
    ) -> Self:
        """`data_json` and `data_size` may be given when many devices share the same data.
        `app_id` is empty for the settings' FCM project, else the app whose account sends."""
        return cls(
            index=index,
            provider=Provider.FCM,
            device_id=device_id,
            token=token,
            app_id=app_id,
            payload=data_json if data_json is not None else compact_json(data),
            size=data_size if data_size is not None else fcm_data_size(data),
            priority=priority,
            fcm_options=fcm_options,
        )


VOIP = "voip"  # apns-push-type of a PushKit (VoIP) notification
VOIP_SUFFIX = ".voip"  # PushKit's topic is the bundle id with this suffix
VOIP_PRIORITY = 10


def voip_topic(topic: str) -> str:
    return topic if topic.endswith(VOIP_SUFFIX) else topic + VOIP_SUFFIX


def is_voip_app(app_id: str) -> bool:
    """Whether an app id is PushKit's topic: its tokens take VoIP pushes only."""
    return app_id.endswith(VOIP_SUFFIX)


def utf8_size(text: str) -> int:
    """Bytes on the wire; a lone surrogate (never valid UTF-8) counts as unsendable."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        return UNSENDABLE


def fcm_data_size(data: dict[str, str]) -> int:
    # FCM counts the keys and values of `data` against its 4 KB limit.
    return sum(utf8_size(k) + utf8_size(v) for k, v in data.items())


# A size no limit admits: the payload cannot be encoded at all.
UNSENDABLE = 1 << 62

_OMITTED_WHEN_UNSET = ("topic", "fcm_options")


@dataclass(frozen=True, slots=True)
class Batch:
    """Deliveries of one request (or their retries) for one tenant.

    `tenant` is opaque to the engine: the fairness key (the Zulip server's id as text).
    `protocol` names the app that settles dead tokens ("e2ee", "legacy").
    """

    id: str
    attempt: int
    tenant: str
    server_id: int
    realm_id: int | None
    protocol: str
    give_up_at: float
    deliveries: list[Delivery] = field(default_factory=list)

    def with_deliveries(self, deliveries: list[Delivery], *, attempt: int | None = None) -> Self:
        return replace(
            self, deliveries=deliveries, attempt=self.attempt if attempt is None else attempt
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for delivery in data["deliveries"]:
            # Fields newer than the first engine are sent only when set: a batch that does
            # not use them stays readable by a worker that predates them (a rolling upgrade).
            for name in _OMITTED_WHEN_UNSET:
                if delivery[name] is None:
                    del delivery[name]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        deliveries = [
            Delivery(**{**d, "provider": Provider(d["provider"])}) for d in data["deliveries"]
        ]
        return cls(**{**data, "deliveries": deliveries})
