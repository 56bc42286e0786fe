"""MATRIX_APPS_FILE read as Sygnal reads its `apps:` (sygnal.yaml.sample's keys)."""

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from pytest_django.fixtures import Settings

from delivery import credentials
from delivery.types import Provider
from matrix import config
from matrix.config import MatrixConfigError, parse_apps

SYGNAL_YAML = """
log:
  setup:
    version: 1
http:
  bind_addresses: ['127.0.0.1']
  port: 5000
apps:
  com.example.myapp.ios:
    type: apns
    keyfile: my_key.p8
    key_id: MY_KEY_ID
    team_id: MY_TEAM_ID
    topic: com.example.myApp
    send_badge_counts: false
    inflight_request_limit: 512
    platform: sandbox
    convert_device_token_to_hex: false
  im.vector.app:
    type: gcm
    api_version: v1
    project_id: project-id
    service_account_file: /path/to/service_account.json
    max_connections: 20
"""


GCM = (
    "apps:\n  a:\n    type: gcm\n    api_version: v1\n    project_id: p\n"
    "    service_account_file: s\n"
)


def test_a_sygnal_config_is_read_with_its_apps_keys(settings: Settings, tmp_path: Path) -> None:
    settings.APNS_ENDPOINT = ""

    apps = parse_apps(SYGNAL_YAML, base=tmp_path)

    ios, android = apps["com.example.myapp.ios"], apps["im.vector.app"]
    assert ios.provider == Provider.APNS
    assert ios.apns == credentials.ApnsCredentials(
        name="matrix com.example.myapp.ios",
        endpoint=credentials.APNS_SANDBOX,
        key_file=str(tmp_path / "my_key.p8"),  # relative to the file
        key_id="MY_KEY_ID",
        team_id="MY_TEAM_ID",
    )
    assert (ios.topic, ios.push_type, ios.send_badge_counts) == ("com.example.myApp", None, False)
    assert ios.convert_device_token_to_hex is False
    assert android.provider == Provider.FCM
    assert android.fcm == credentials.FcmAccount(
        name="matrix im.vector.app",
        credentials_file="/path/to/service_account.json",
        project_id="project-id",
    )


def test_production_is_the_default_platform(settings: Settings, tmp_path: Path) -> None:
    settings.APNS_ENDPOINT = ""
    text = SYGNAL_YAML.replace("    platform: sandbox\n", "")

    app = parse_apps(text, base=tmp_path)["com.example.myapp.ios"]

    assert app.apns is not None
    assert app.apns.endpoint == credentials.APNS_PRODUCTION


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apps: [", "not YAML"),
        ("http: {}", "apps:"),
        ("apps:\n  a:\n    type: webpush\n", "type"),
        ("apps:\n  a:\n    type: apns\n", "certfile or keyfile"),
        ("apps:\n  a:\n    type: apns\n    keyfile: k.p8\n", "key_id"),
        ("apps:\n  a:\n    type: apns\n    certfile: c.pem\n    platform: staging\n", "platform"),
        ("apps:\n  a:\n    type: apns\n    certfile: c.pem\n    push_type: loud\n", "push_type"),
        ("apps:\n  a:\n    type: gcm\n    api_key: legacy\n", "api_version v1"),
        ("apps:\n  a:\n    type: gcm\n    api_version: v1\n", "project_id"),
        (GCM + "    fcm_options: [1]\n", "fcm_options must be a dict"),
        (GCM + "    fcm_options: {android: !!set {x}}\n", "plain JSON"),
        (
            "apps:\n  a:\n    type: apns\n    certfile: c.pem\n    topic: t\n    channels: x\n",
            "channels",
        ),
        (
            "apps:\n  a:\n    type: apns\n    certfile: c.pem\n    topic: t\n"
            "    channel_types: {m.room.message: nope}\n",
            "unknown channels",
        ),
    ],
)
def test_a_bad_file_is_refused_with_a_reason(text: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(MatrixConfigError, match=message):
        parse_apps(text, base=tmp_path)


def _certificate(tmp_path: Path, uid: str) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.USER_ID, uid)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "cert.pem"
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def test_a_certificate_app_without_topic_takes_the_certificates(tmp_path: Path) -> None:
    _certificate(tmp_path, "com.example.certapp")

    app = parse_apps("apps:\n  a:\n    type: apns\n    certfile: cert.pem\n", base=tmp_path)["a"]

    assert app.topic == "com.example.certapp"
    assert app.apns is not None
    assert app.apns.cert_file == str(tmp_path / "cert.pem")


def test_the_start_fails_on_a_broken_or_incomplete_file(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "sygnal.yaml"
    settings.MATRIX_APPS_FILE = str(path)
    config._load.cache_clear()
    path.write_text("apps: {a: {type: nope}}")
    with pytest.raises(SystemCheckError, match="MATRIX_APPS_FILE"):
        call_command("check")

    config._load.cache_clear()
    path.write_text(SYGNAL_YAML)
    with pytest.raises(SystemCheckError, match=r"my_key\.p8"):
        call_command("check")
    config._load.cache_clear()


def test_unset_means_no_apps(settings: Settings) -> None:
    settings.MATRIX_APPS_FILE = ""
    assert config.find_app("im.vector.app") is None
