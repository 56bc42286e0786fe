"""Key-pair commands: generate, list, retire, import, and Zulip's command names."""

import base64
import json
import logging
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from nacl.public import PrivateKey

from registrations import keys
from registrations.models import AuditLog, BouncerKeyPair

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def private_b64(pair: BouncerKeyPair) -> str:
    private = keys.private_key_for(pair.public_key)
    assert private is not None
    return base64.b64encode(bytes(private)).decode()


def test_generate_prints_the_public_key_last_and_never_the_private_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    output = run("bouncer_keys", "generate")
    pair = BouncerKeyPair.objects.get()
    assert output.strip().splitlines()[-1] == pair.public_key
    assert private_b64(pair) not in output + caplog.text
    assert bytes(pair.sealed_private_key) != base64.b64decode(private_b64(pair))
    assert AuditLog.objects.filter(
        event_type="bouncer_key_generated", extra_data__public_key=pair.public_key
    ).exists()


def test_generate_if_none_reuses_the_active_key() -> None:
    first = run("bouncer_keys", "generate", "--if-none").strip().splitlines()[-1]
    second = run("bouncer_keys", "generate", "--if-none").strip().splitlines()[-1]
    assert first == second
    assert BouncerKeyPair.objects.count() == 1


def test_list_shows_states_and_no_private_material() -> None:
    active = keys.generate_key()
    retired = keys.generate_key()
    keys.retire_key(public_key=retired.public_key)
    listed = json.loads(run("bouncer_keys", "list", "--json"))
    states = {row["public_key"]: row["state"] for row in listed}
    assert states == {active.public_key: "active", retired.public_key: "retired"}
    text = run("bouncer_keys", "list")
    assert active.public_key in text
    assert "retired" in text
    assert private_b64(active) not in text + json.dumps(listed)


def test_retire_refuses_the_key_from_then_on_and_is_audited() -> None:
    pair = keys.generate_key()
    keys.generate_key()  # its successor: the last active key is retired only with --force
    run("bouncer_keys", "retire", pair.public_key)
    assert keys.private_key_for(pair.public_key) is None
    assert AuditLog.objects.filter(event_type="bouncer_key_retired").count() == 1
    with pytest.raises(CommandError, match="No key pair found"):
        run("bouncer_keys", "retire", "AAAA")


def test_import_takes_zulips_json_and_checks_each_pair(tmp_path: Path) -> None:
    private = PrivateKey.generate()
    public = base64.b64encode(bytes(private.public_key)).decode()
    good = tmp_path / "keys.json"
    good.write_text(json.dumps({public: base64.b64encode(bytes(private)).decode()}))
    output = run("bouncer_keys", "import", str(good))
    assert f"Imported {public}" in output
    assert BouncerKeyPair.objects.get().origin == "imported"
    assert keys.private_key_for(public) is not None
    # Importing again changes nothing.
    assert "0 imported, 1 already present" in run("bouncer_keys", "import", str(good))
    mismatched = tmp_path / "bad.json"
    other = base64.b64encode(bytes(PrivateKey.generate())).decode()
    mismatched.write_text(json.dumps({public: other}))
    with pytest.raises(CommandError, match="does not match"):
        run("bouncer_keys", "import", str(mismatched))


def test_zulips_command_names_add_and_remove_keys() -> None:
    output = run("manage_push_registration_encryption_keys", "--add")
    pair = BouncerKeyPair.objects.get()
    assert pair.public_key in output
    assert private_b64(pair) not in output
    run("manage_push_registration_encryption_keys", "--remove-key", pair.public_key)
    pair.refresh_from_db()
    assert pair.retired_at is not None
    with pytest.raises(CommandError, match="Error: No key pair found"):
        run("manage_push_registration_encryption_keys", "--remove-key", "nope")


def test_lookup_is_one_query_however_many_keys_exist(
    django_assert_max_num_queries: object,
) -> None:
    pairs = [keys.generate_key() for _ in range(20)]
    keys.private_key_for(pairs[-1].public_key)  # opened once, cached
    with django_assert_max_num_queries(1):  # type: ignore[operator]
        assert keys.private_key_for(pairs[-1].public_key) is not None


def test_add_remote_server_stores_a_hash_and_prints_no_key() -> None:
    from registrations.models import RemoteZulipServer

    key = "k" * 64
    output = run(
        "add_remote_server",
        "--uuid",
        "6cde5f7a-1f7e-4978-9716-49f69ebfc9fe",
        "--key",
        key,
        "--hostname",
        "zulip.example.net",
        "--email",
        "admin@zulip.example.net",
    )
    assert key not in output
    server = RemoteZulipServer.objects.get()
    assert server.api_key_matches(key)
    assert AuditLog.objects.filter(
        server=server, event_type="remote_server_added_by_operator"
    ).exists()
    with pytest.raises(CommandError, match="Invalid UUID"):
        run(
            "add_remote_server",
            "--uuid",
            "bad" * 12,
            "--key",
            key,
            "--hostname",
            "h.example.net",
            "--email",
            "a@h.example.net",
        )
