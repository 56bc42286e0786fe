"""The bouncer's only settings module: everything comes from the environment.

Each secret can also be read from a file named by the same variable with `_FILE`
appended (Docker and systemd credentials). Local runs (`make run` sets
BOUNCER_LOCAL_SECRETS=true; `DJANGO_DEBUG=true` too) generate missing secrets once into
`var/`, and later commands in the same checkout read them from there; production, with no
such files, fails fast when one is missing.
"""

import base64
import ipaddress
import json
import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("BOUNCER_VAR_DIR", BASE_DIR / "var"))


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from None


def env_secret(name: str) -> str:
    """A secret from NAME, or from the file NAME_FILE names; "" when neither is set."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as e:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {file_name}: {e}") from None
    return os.environ.get(name, "")


def local_secret(name: str, make: str, *, create: bool) -> str:
    """A secret generated once into var/ for local runs (`make run`), and read from there by
    every later command in the checkout; "" when there is none and `create` is false. A
    production install has no var/, so its missing secrets still fail the start."""
    path = VAR_DIR / name.lower()
    if not path.exists():
        if not create:
            return ""
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(make)
    return path.read_text().strip()


DEBUG = env_bool("DJANGO_DEBUG", False)
# `make run`: the product as it runs in production (DEBUG off), on secrets made for this
# checkout. Never set in production.
LOCAL_SECRETS = DEBUG or env_bool("BOUNCER_LOCAL_SECRETS", False)

SECRET_KEY = env_secret("DJANGO_SECRET_KEY") or local_secret(
    "DJANGO_SECRET_KEY", secrets.token_urlsafe(50), create=LOCAL_SECRETS
)
if not SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY is required when DJANGO_DEBUG is false")

# Seals the private halves of bouncer key pairs at rest (see registrations/sealing.py).
BOUNCER_KEY_ENCRYPTION_KEY = env_secret("BOUNCER_KEY_ENCRYPTION_KEY") or local_secret(
    "BOUNCER_KEY_ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode(), create=LOCAL_SECRETS
)
if not BOUNCER_KEY_ENCRYPTION_KEY:
    raise ImproperlyConfigured(
        "BOUNCER_KEY_ENCRYPTION_KEY is required when DJANGO_DEBUG is false "
        "(32 random bytes in base64: python -c 'import os,base64;"
        "print(base64.b64encode(os.urandom(32)).decode())')"
    )


def _registration_keys(raw: str) -> dict[str, str]:
    if not raw:
        return {}
    try:
        keys = json.loads(raw)
    except ValueError:
        raise ImproperlyConfigured("PUSH_REGISTRATION_ENCRYPTION_KEYS is not valid JSON") from None
    if not isinstance(keys, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in keys.items()
    ):
        raise ImproperlyConfigured(
            "PUSH_REGISTRATION_ENCRYPTION_KEYS must be a JSON object {public_b64: private_b64}"
        )
    return keys


# Zulip's format: {base64 public key: base64 private key}; accepted beside the database's keys.
PUSH_REGISTRATION_ENCRYPTION_KEYS = _registration_keys(
    env_secret("PUSH_REGISTRATION_ENCRYPTION_KEYS")
)

ALLOWED_HOSTS = [h.strip() for h in env_str("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")]
ALLOWED_HOSTS = [h for h in ALLOWED_HOSTS if h]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'bouncer.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # The embedded database serves one developer; a busy timeout avoids "database is locked".
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
else:
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # The same backend with a health check that needs no round trip (its docstring).
        DATABASES["default"]["ENGINE"] = "bouncer.postgresql"
    DATABASES["default"].setdefault("OPTIONS", {})
    # Every statement is bounded: a stuck query (a lock never released, a server gone
    # silent) must not hold a request, a worker thread or the notify path's pool forever.
    # A migration of a very large table may need more: DATABASE_STATEMENT_TIMEOUT_SECONDS=0
    # for that command lifts the bound.
    _statement_timeout_ms = int(env_float("DATABASE_STATEMENT_TIMEOUT_SECONDS", 60.0) * 1000)
    DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", 5)
    DATABASES["default"]["OPTIONS"].setdefault(
        "options", f"-c statement_timeout={_statement_timeout_ms}"
    )
    # A peer that vanished without closing (a failover, a dropped NAT entry) is noticed in
    # about a minute instead of the kernel's two hours.
    for _name, _value in (
        ("keepalives", 1),
        ("keepalives_idle", 30),
        ("keepalives_interval", 10),
        ("keepalives_count", 3),
    ):
        DATABASES["default"]["OPTIONS"].setdefault(_name, _value)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "bouncer",
    "registrations",
    "legacy",
    "delivery",
    "matrix",
]

MIDDLEWARE = [
    "bouncer.metrics.RequestMetricsMiddleware",
    "bouncer.errors.BouncerErrorMiddleware",
    "bouncer.overload.LoadSheddingMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # The admin's static files, served by the web process itself (collected by
    # deploy/install.sh and `make run`; with DJANGO_DEBUG=true found in the apps directly).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "bouncer.urls"
WSGI_APPLICATION = "bouncer.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # Project-wide overrides of Django's own templates (the admin index's overview link);
        # searched before the apps', so they win over django.contrib.admin's.
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "static")))

# Zulip servers send small forms; analytics uploads are the largest bodies.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 10 * 1024 * 1024)

# Behind a TLS-terminating proxy (deploy/nginx) the original scheme arrives in a header, and
# the client's address in the last X-Forwarded-For entry (registrations/ratelimit.py).
BOUNCER_BEHIND_PROXY = env_bool("BOUNCER_BEHIND_PROXY", False)
if BOUNCER_BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # The admin is reached over HTTPS only, through the proxy.
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
# TLS, the HTTP-to-HTTPS redirect and HSTS belong to the proxy (deploy/nginx/bouncer.conf):
# a redirect here would also redirect the plain-HTTP probes on 127.0.0.1.
SILENCED_SYSTEM_CHECKS = ["security.W004", "security.W008"]

# --- Zulip protocol behaviour --------------------------------------------------------------

BOUNCER_OPEN_REGISTRATION = env_bool("BOUNCER_OPEN_REGISTRATION", True)
BOUNCER_CHECK_EMAIL_DNS = env_bool("BOUNCER_CHECK_EMAIL_DNS", False)


def _rate_limit(raw: str, name: str = "BOUNCER_RATE_LIMIT") -> tuple[int, int]:
    try:
        requests, seconds = (int(part) for part in raw.split("/"))
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} must be REQUESTS/SECONDS, e.g. 1000/60, not {raw!r}"
        ) from None
    if requests < 1 or seconds < 1:
        raise ImproperlyConfigured(f"{name} needs positive numbers")
    return requests, seconds


# Zulip's api_by_remote_server rule: (requests, seconds) per remote server.
BOUNCER_RATE_LIMIT = _rate_limit(env_str("BOUNCER_RATE_LIMIT", "1000/60"))
# Per source address: the unauthenticated register, transfer and verify_challenge together.
BOUNCER_ANONYMOUS_RATE_LIMIT = _rate_limit(
    env_str("BOUNCER_ANONYMOUS_RATE_LIMIT", "60/60"), "BOUNCER_ANONYMOUS_RATE_LIMIT"
)
# verify_challenge makes the bouncer fetch a URL: per source address and per hostname.
BOUNCER_VERIFY_RATE_LIMIT = _rate_limit(
    env_str("BOUNCER_VERIFY_RATE_LIMIT", "10/60"), "BOUNCER_VERIFY_RATE_LIMIT"
)
# Failed authentications per source address; past it the address gets 429 until the window ends.
BOUNCER_AUTH_FAILURE_RATE_LIMIT = _rate_limit(
    env_str("BOUNCER_AUTH_FAILURE_RATE_LIMIT", "100/60"), "BOUNCER_AUTH_FAILURE_RATE_LIMIT"
)
# Transfer verification fetches https://<hostname>/...: loopback, private, link-local and other
# non-public addresses are refused unless this is true (tests, a bouncer on a private network).
BOUNCER_TRANSFER_ALLOW_PRIVATE_HOSTS = env_bool("BOUNCER_TRANSFER_ALLOW_PRIVATE_HOSTS", False)

# How long a notify waits for Apple and Google; what is unanswered by then is retried later.
NOTIFY_WAIT_SECONDS = env_float("NOTIFY_WAIT_SECONDS", 10.0)
# A request that waited longer than this in front of the web workers (the proxy's
# X-Request-Start stamp) is answered 503 at once: overload sheds load instead of timing out.
BOUNCER_MAX_QUEUE_SECONDS = env_float("BOUNCER_MAX_QUEUE_SECONDS", 5.0)
# How long transient upstream failures are retried in the background.
DELIVERY_RETRY_WINDOW_SECONDS = env_int("DELIVERY_RETRY_WINDOW_SECONDS", 3600)
# Deliveries in flight to one provider per process; beyond it they wait their tenant's turn
# (delivery/fairness.py). Apple allows ~1,000 streams per connection; the senders open up to 4.
DELIVERY_MAX_IN_FLIGHT = env_int("DELIVERY_MAX_IN_FLIGHT", 2000)
# Admission per web process (delivery/fairness.py): notify requests in progress at once, a
# bound that adapts between the two figures to keep the event loop within its lag target;
# beyond it requests wait their server's turn (round robin by server). One refused at once
# with 503 + Retry-After: its server already has the third figure waiting, or it waited the
# fourth (seconds).
BOUNCER_MIN_CONCURRENT_REQUESTS = env_int("BOUNCER_MIN_CONCURRENT_REQUESTS", 32)
BOUNCER_MAX_CONCURRENT_REQUESTS = env_int("BOUNCER_MAX_CONCURRENT_REQUESTS", 512)
BOUNCER_MAX_WAITING_PER_SERVER = env_int("BOUNCER_MAX_WAITING_PER_SERVER", 128)
BOUNCER_MAX_ADMISSION_WAIT_SECONDS = env_float("BOUNCER_MAX_ADMISSION_WAIT_SECONDS", 2.0)
BOUNCER_LOOP_LAG_TARGET_SECONDS = env_float("BOUNCER_LOOP_LAG_TARGET_SECONDS", 0.02)
# While a quiet server (a few notifies at once) shares a web process with a busy one: the
# stricter lag target and the lower bound that keep the quiet server's latency near its own.
# Below ~12 notifies at once, a flood's throughput was limited by how many were in progress
# (8 five-device notifies over a 40 ms APNs round trip), not by the CPU, and fell further
# as more waited (bench/README.md).
BOUNCER_ISOLATION_LAG_TARGET_SECONDS = env_float("BOUNCER_ISOLATION_LAG_TARGET_SECONDS", 0.005)
BOUNCER_ISOLATION_MIN_CONCURRENT_REQUESTS = env_int("BOUNCER_ISOLATION_MIN_CONCURRENT_REQUESTS", 12)
# In-process caches of servers, realms and bouncer keys: how stale they may be. A
# deactivation, an API key change or a key retirement takes effect everywhere within this.
BOUNCER_CACHE_SECONDS = env_float("BOUNCER_CACHE_SECONDS", 1.0)
# With Redis, changes are pushed to every process (registrations/lookups.py) and entries may
# live this long; without it (or while it is down) they live BOUNCER_CACHE_SECONDS.
BOUNCER_CACHE_MAX_SECONDS = env_float("BOUNCER_CACHE_MAX_SECONDS", 300.0)
# How long a worker's claim on a delivery lasts before another may send it (must exceed the
# upstream request timeout): bounds how late a delivery is when its worker dies mid-send.
DELIVERY_CLAIM_SECONDS = env_int("DELIVERY_CLAIM_SECONDS", 60)
# How long a worker sends one retry batch: what Apple or Google has not answered by then is
# cancelled and retried in a later batch (a stream they never answer, a full gate). Below the
# claim's lifetime, or another worker could take the same deliveries while this one still
# sends them (bouncer/checks.py).
DELIVERY_BATCH_TIMEOUT_SECONDS = env_float(
    "DELIVERY_BATCH_TIMEOUT_SECONDS", DELIVERY_CLAIM_SECONDS * 0.75
)
# Days of delivery log kept; 0 turns the log off.
DELIVERY_LOG_DAYS = env_int("DELIVERY_LOG_DAYS", 7)
# Legacy tokens of a deactivated server are removed this many days after its deactivation.
LEGACY_DEACTIVATED_RETENTION_DAYS = env_int("LEGACY_DEACTIVATED_RETENTION_DAYS", 30)
# Prometheus multi-process mode (web and Celery processes): where every process writes.
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR")
# HOST:PORT where a Celery worker serves /metrics itself, for machines with no web process
# (the web's /metrics covers only the processes of its own machine). Unset: off.
WORKER_METRICS_BIND = env_str("WORKER_METRICS_BIND")

# --- Upstream credentials (used by delivery/) ----------------------------------------------

APNS_TOKEN_KEY_FILE = env_str("APNS_TOKEN_KEY_FILE")
APNS_TOKEN_KEY_ID = env_str("APNS_TOKEN_KEY_ID")
APNS_TEAM_ID = env_str("APNS_TEAM_ID")
APNS_CERT_FILE = env_str("APNS_CERT_FILE")
APNS_SANDBOX = env_bool("APNS_SANDBOX", False)
APNS_ENDPOINT = env_str("APNS_ENDPOINT")
# The sandbox environment's origin when it is not APNS_ENDPOINT's (tests: a second fake).
APNS_SANDBOX_ENDPOINT = env_str("APNS_SANDBOX_ENDPOINT")
FCM_CREDENTIALS_FILE = env_str("FCM_CREDENTIALS_FILE") or env_str("ANDROID_FCM_CREDENTIALS_PATH")
FCM_ENDPOINT = env_str("FCM_ENDPOINT", "https://fcm.googleapis.com")
PUSH_APPS_FILE = env_str("PUSH_APPS_FILE")
# Extra CA bundle trusted for outbound TLS: APNs, FCM, OAuth and registration transfer.
PUSH_CA_FILE = env_str("PUSH_CA_FILE")

# --- Matrix push gateway (matrix/, docs/matrix.md) -----------------------------------------

# Sygnal's YAML `apps:` (a whole Sygnal config is accepted); unset: every pushkey rejected.
MATRIX_APPS_FILE = env_str("MATRIX_APPS_FILE")


def _networks(raw: str) -> tuple[str, ...]:
    networks = tuple(part.strip() for part in raw.split(",") if part.strip())
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ImproperlyConfigured(
                f"MATRIX_NOTIFY_ALLOWED_NETWORKS: {network!r} is not a CIDR network"
            ) from None
    return networks


# Who may call the Matrix endpoints (CIDRs, comma-separated); empty: anyone (Matrix's notify
# has no authentication of its own).
MATRIX_NOTIFY_ALLOWED_NETWORKS = _networks(env_str("MATRIX_NOTIFY_ALLOWED_NETWORKS"))
# Requests per seconds to the Matrix endpoints, per source address (a homeserver).
MATRIX_NOTIFY_RATE_LIMIT = _rate_limit(
    env_str("MATRIX_NOTIFY_RATE_LIMIT", "6000/60"), "MATRIX_NOTIFY_RATE_LIMIT"
)

# --- Celery ---------------------------------------------------------------------------------

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL")
# Without a broker (make run) tasks run in-process: retries on a timer (delivery/tasks.py).
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
_BROKER_IS_REDIS = CELERY_BROKER_URL.startswith(("redis://", "rediss://"))
# Redis for what a message queue cannot do: the retry batches' claims (delivery/channel.py)
# and shared rate limits. The broker itself when it is Redis; with RabbitMQ, set REDIS_URL.
REDIS_URL = env_str("REDIS_URL") or (CELERY_BROKER_URL if _BROKER_IS_REDIS else "")
CELERY_RESULT_BACKEND = REDIS_URL or None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A notify request must not hang on a dead broker: fail fast, answer 503, the server retries.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_BEAT_SCHEDULE = {
    "prune-delivery-log": {"task": "delivery.prune_delivery_log", "schedule": 3600.0},
    "cleanup-legacy-registrations": {
        "task": "legacy.cleanup_legacy_registrations",
        "schedule": 6 * 3600.0,
    },
}
_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 300)
# A retry is never due later than this: past the visibility timeout the Redis transport would
# hand the waiting task to another worker (a Retry-After longer than that waits in steps).
CELERY_MAX_COUNTDOWN_SECONDS = max(1, _VISIBILITY_TIMEOUT - 30)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "socket_timeout": 5,
    "socket_connect_timeout": 5,
    # Unacknowledged tasks of a worker that died are handed out again after this long...
    "visibility_timeout": _VISIBILITY_TIMEOUT,
    # ...by the next sweep of a live worker: kombu sweeps every interval x throttle seconds
    # (10 x 10 by default, which can add 100 s); every 10 s (or sooner) here.
    "unacked_restore_interval": max(1, min(10, _VISIBILITY_TIMEOUT)),
    "unacked_restore_throttle": 1,
}

# --- Logging ---------------------------------------------------------------------------------

LOG_LEVEL = env_str("BOUNCER_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["stderr"], "level": LOG_LEVEL},
    "loggers": {
        # Our own loggers carry the level explicitly: Celery's --loglevel resets the root's.
        **{app: {"level": LOG_LEVEL} for app in ("bouncer", "registrations", "legacy", "delivery")},
        # Django logs every 4xx as a warning; our own log lines say what matters.
        "django.request": {"level": "ERROR"},
    },
}
