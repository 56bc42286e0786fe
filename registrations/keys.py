"""Bouncer key pairs: generate, list, retire, import, and find the one a phone sealed to.

The only module (with sealing.py) that touches private keys. A lookup is one indexed query
for the public key, so it costs the same with one key or a hundred; the opened private key
is cached per (public key, sealed bytes) so unsealing happens once per process, while a
retirement takes effect on the very next request everywhere (the query sees it).
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey

from bouncer import rows
from bouncer.asyncdb import database
from registrations import sealing
from registrations.models import AuditLog, BouncerKeyPair


class KeyPairError(Exception):
    """A key operation the operator asked for cannot be done; the message says why."""


class KeyUnavailable(Exception):
    """A stored key pair cannot be opened: BOUNCER_KEY_ENCRYPTION_KEY is not the one that
    sealed it (a restore without the right key, a typo). An operator fault, never the
    caller's."""


@dataclass(frozen=True)
class KeyInfo:
    public_key: str
    state: str
    origin: str
    created: datetime | None
    retired_at: datetime | None


_cache_lock = threading.Lock()
_opened: dict[tuple[str, bytes], PrivateKey] = {}


def _env_keys() -> dict[str, str]:
    return settings.PUSH_REGISTRATION_ENCRYPTION_KEYS


def _store(private: PrivateKey, *, origin: str) -> BouncerKeyPair:
    sealed = sealing.seal_private_key(
        private, encryption_key_b64=settings.BOUNCER_KEY_ENCRYPTION_KEY
    )
    return BouncerKeyPair.objects.create(
        public_key=sealing.public_key_of(private), sealed_private_key=sealed, origin=origin
    )


def generate_key() -> BouncerKeyPair:
    _, private = sealing.generate_key_pair()
    with transaction.atomic():
        pair = _store(private, origin=BouncerKeyPair.Origin.GENERATED)
        AuditLog.objects.create(
            event_type=AuditLog.Event.BOUNCER_KEY_GENERATED,
            extra_data={"public_key": pair.public_key},
        )
    return pair


def active_key() -> BouncerKeyPair | None:
    return BouncerKeyPair.objects.filter(retired_at__isnull=True).order_by("-created").first()


def list_keys() -> list[KeyInfo]:
    keys = [
        KeyInfo(
            public_key=pair.public_key,
            state="active" if pair.is_active else "retired",
            origin=pair.origin,
            created=pair.created,
            retired_at=pair.retired_at,
        )
        for pair in BouncerKeyPair.objects.order_by("created")
    ]
    keys += [
        KeyInfo(
            public_key=public, state="active", origin="environment", created=None, retired_at=None
        )
        for public in _env_keys()
    ]
    return keys


def retire_key(*, public_key: str) -> BouncerKeyPair:
    with transaction.atomic():
        pair = BouncerKeyPair.objects.select_for_update().filter(public_key=public_key).first()
        if pair is None:
            if public_key in _env_keys():
                raise KeyPairError(
                    "This key comes from PUSH_REGISTRATION_ENCRYPTION_KEYS; remove it from "
                    "that setting and restart to stop accepting it."
                )
            raise KeyPairError(f"No key pair found with public key {public_key}")
        if pair.retired_at is None:
            pair.retired_at = timezone.now()
            pair.save(update_fields=["retired_at"])
            AuditLog.objects.create(
                event_type=AuditLog.Event.BOUNCER_KEY_RETIRED,
                extra_data={"public_key": pair.public_key},
            )
    return pair


def import_keys(*, keys: dict[str, str]) -> list[BouncerKeyPair]:
    """Import Zulip's `{public_b64: private_b64}`; each private key must derive its public key."""
    privates: list[PrivateKey] = []
    for public, private_b64 in keys.items():
        try:
            private = sealing.private_key_from_b64(private_b64)
        except ValueError as e:
            raise KeyPairError(f"The private key for {public} is invalid: {e}") from None
        if sealing.public_key_of(private) != public:
            raise KeyPairError(f"The private key for {public} does not match that public key")
        privates.append(private)
    imported = []
    with transaction.atomic():
        for private in privates:
            public = sealing.public_key_of(private)
            if BouncerKeyPair.objects.filter(public_key=public).exists():
                continue
            pair = _store(private, origin=BouncerKeyPair.Origin.IMPORTED)
            AuditLog.objects.create(
                event_type=AuditLog.Event.BOUNCER_KEY_IMPORTED, extra_data={"public_key": public}
            )
            imported.append(pair)
    return imported


def _open(public_key: str, sealed: bytes) -> PrivateKey:
    """Unseal a stored private key with BOUNCER_KEY_ENCRYPTION_KEY."""
    try:
        return sealing.open_private_key(
            sealed, encryption_key_b64=settings.BOUNCER_KEY_ENCRYPTION_KEY
        )
    except CryptoError:
        raise KeyUnavailable(
            f"Bouncer key pair {public_key} cannot be opened with BOUNCER_KEY_ENCRYPTION_KEY"
        ) from None


def unopenable_keys() -> list[str]:
    """Public keys of active pairs that BOUNCER_KEY_ENCRYPTION_KEY cannot open."""
    broken = []
    for public, sealed in BouncerKeyPair.objects.filter(retired_at__isnull=True).values_list(
        "public_key", "sealed_private_key"
    ):
        try:
            _open(public, bytes(sealed))
        except KeyUnavailable:
            broken.append(public)
    return broken


def private_key_for(public_key: str) -> PrivateKey | None:
    """The private key for an accepted public key; None when unknown or retired.

    Raises KeyUnavailable when the pair exists but cannot be opened."""
    env = _env_private_key(public_key)
    if env is not None:
        return env
    # In plain SQL: it runs on every registration (bouncer/rows.py says why).
    pair = rows.get_by(BouncerKeyPair, "public_key", public_key)
    if pair is None or pair.retired_at is not None:
        return None
    return _opened_key(public_key, bytes(pair.sealed_private_key))


async def private_key_for_async(public_key: str) -> PrivateKey | None:
    """private_key_for from the event loop: the pair read through the async pool. Read on
    every registration, not cached, so that a retirement takes effect at once."""
    env = _env_private_key(public_key)
    if env is not None:
        return env
    found = await database().fetch(
        f"SELECT sealed_private_key, retired_at FROM {BouncerKeyPair._meta.db_table} "  # noqa: S608 - table name from the model
        "WHERE public_key = %s",
        [public_key],
    )
    if not found or found[0][1] is not None:
        return None
    return _opened_key(public_key, bytes(found[0][0]))


def _env_private_key(public_key: str) -> PrivateKey | None:
    env_private = _env_keys().get(public_key)
    if env_private is None:
        return None
    return _cached(
        (public_key, env_private.encode()), lambda: sealing.private_key_from_b64(env_private)
    )


def _opened_key(public_key: str, sealed: bytes) -> PrivateKey:
    return _cached((public_key, sealed), lambda: _open(public_key, sealed))


def _cached(cache_key: tuple[str, bytes], open_key: Callable[[], PrivateKey]) -> PrivateKey:
    """An opened key, opened once per (public key, what it was opened from)."""
    with _cache_lock:
        cached = _opened.get(cache_key)
    if cached is None:
        cached = open_key()
        with _cache_lock:
            _opened[cache_key] = cached
    return cached
