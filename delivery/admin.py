"""Admin for the delivery log: "the bouncer said 200, what happened to my notification?"."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import TruncHour
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from delivery.models import DeliveryAttempt
from registrations.admin import FAILED_OUTCOMES, ReadOnlyAdmin, ServerFilter, server_link
from registrations.models import RemoteZulipServer


class FailedFilter(admin.SimpleListFilter):
    """Retries, give-ups, configuration faults and rejections: what an operator looks into."""

    title = "failed"
    parameter_name = "failed"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("day", "Failed in the last day"), ("yes", "Failed, any time")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "day":
            since = timezone.now() - timedelta(days=1)
            return queryset.filter(outcome__in=FAILED_OUTCOMES, created__gte=since)
        if self.value() == "yes":
            return queryset.filter(outcome__in=FAILED_OUTCOMES)
        return queryset


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(ReadOnlyAdmin):
    list_display = (
        "created",
        "server_hostname",
        "protocol",
        "provider",
        "app_id",
        "device_link",
        "outcome",
        "upstream_status",
        "reason",
        "attempt",
        "latency_ms",
    )
    list_filter = (
        ServerFilter,
        FailedFilter,
        "outcome",
        "provider",
        "protocol",
        "app_id",
        "reason",
    )
    search_fields = ("=batch_id", "=device_id", "=server_id", "upstream_id")
    date_hierarchy = "created"
    show_full_result_count = False  # the log is large; counting it all is slow

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeliveryAttempt]:
        # The log keeps plain server ids (it outlives servers); the hostname is looked up in
        # the same query, so the page costs no query per row.
        queryset: QuerySet[DeliveryAttempt] = super().get_queryset(request)
        hostname = RemoteZulipServer.objects.filter(pk=OuterRef("server_id")).values("hostname")
        return queryset.annotate(server_hostname_value=Subquery(hostname[:1]))

    @admin.display(description="device", ordering="device_id")
    def device_link(self, attempt: DeliveryAttempt) -> str:
        if attempt.protocol == DeliveryAttempt.Protocol.MATRIX:
            return "—"  # a Matrix pushkey is the homeserver's: no row of ours names it
        # The id names an E2EE device or a legacy token row, by protocol; either may be gone.
        model = (
            "registrations_remotepushdevice"
            if attempt.protocol == DeliveryAttempt.Protocol.E2EE
            else "legacy_remotepushdevicetoken"
        )
        url = reverse(f"admin:{model}_change", args=[attempt.device_id])
        return format_html('<a href="{}">{} {}</a>', url, attempt.protocol, attempt.device_id)

    @admin.display(description="server", ordering="server_hostname_value")
    def server_hostname(self, attempt: DeliveryAttempt) -> str:
        if attempt.protocol == DeliveryAttempt.Protocol.MATRIX:
            return "Matrix homeserver"
        return server_link(attempt.server_id, getattr(attempt, "server_hostname_value", None))


# --- The operator's overview (/admin/overview/) --------------------------------------------

# Columns of the overview's delivery tables, in the order an operator reads them.
OVERVIEW_OUTCOMES = ("delivered", "token_dead", "retry", "gave_up", "config_fault", "rejected")
SPARKLINE_HOURS = 24
SPARKLINE_WIDTH, SPARKLINE_HEIGHT = 120, 24


@dataclass(frozen=True)
class AppDeliveries:
    """One provider and app's deliveries by outcome over the last hour and the last day."""

    provider: str
    app_id: str
    hour: dict[str, int]
    day: dict[str, int]
    sparkline: str  # SVG points of hourly deliveries over the last day


def _sparkline(counts: list[int]) -> str:
    top = max(counts) or 1
    step = SPARKLINE_WIDTH / max(len(counts) - 1, 1)
    return " ".join(
        f"{i * step:.1f},{SPARKLINE_HEIGHT - 2 - (c / top) * (SPARKLINE_HEIGHT - 4):.1f}"
        for i, c in enumerate(counts)
    )


def deliveries_by_app(*, now: datetime) -> list[AppDeliveries]:
    """Two GROUP BYs over the last day of the log (indexed on `created`): outcome totals per
    provider and app, and per hour for the sparkline."""
    hour_ago, day_ago = now - timedelta(hours=1), now - timedelta(days=1)
    recent = DeliveryAttempt.objects.filter(created__gte=day_ago)
    rows = recent.values("provider", "app_id", "outcome").annotate(
        day=Count("id"), hour=Count("id", filter=Q(created__gte=hour_ago))
    )
    apps: dict[tuple[str, str], tuple[dict[str, int], dict[str, int]]] = {}
    for row in rows:
        hour, day = apps.setdefault((row["provider"], row["app_id"]), ({}, {}))
        hour[row["outcome"]] = row["hour"]
        day[row["outcome"]] = row["day"]
    hourly: dict[tuple[str, str], list[int]] = {key: [0] * SPARKLINE_HOURS for key in apps}
    per_hour = (
        recent.annotate(bucket=TruncHour("created"))
        .values("provider", "app_id", "bucket")
        .annotate(n=Count("id"))
    )
    for row in per_hour:
        age = int((now - row["bucket"]).total_seconds() // 3600)
        if 0 <= age < SPARKLINE_HOURS:
            hourly[(row["provider"], row["app_id"])][SPARKLINE_HOURS - 1 - age] += row["n"]
    return [
        AppDeliveries(
            provider=provider,
            app_id=app_id or "—",
            hour={o: hour.get(o, 0) for o in OVERVIEW_OUTCOMES},
            day={o: day.get(o, 0) for o in OVERVIEW_OUTCOMES},
            sparkline=_sparkline(hourly[(provider, app_id)]),
        )
        for (provider, app_id), (hour, day) in sorted(apps.items())
    ]


def overview_view(request: HttpRequest) -> HttpResponse:
    """Is the bouncer delivering, and if not, why: one page from the delivery log, the servers,
    the keys and the credentials (no secrets: files are only opened, never shown)."""
    from bouncer.metrics import credential_states
    from registrations.models import BouncerKeyPair, RemotePushDevice

    now = timezone.now()
    day_ago = now - timedelta(days=1)
    failures = (
        DeliveryAttempt.objects.filter(created__gte=day_ago, outcome__in=FAILED_OUTCOMES)
        .values("provider", "outcome", "reason")
        .annotate(n=Count("id"))
        .order_by("-n")[:20]
    )
    silent = (
        RemoteZulipServer.objects.filter(deactivated=False)
        .filter(Q(last_request_datetime__lt=day_ago) | Q(last_request_datetime__isnull=True))
        .order_by("last_request_datetime")
    )
    context = {
        **admin.site.each_context(request),
        "title": "Overview",
        "now": now,
        "outcomes": OVERVIEW_OUTCOMES,
        "apps": deliveries_by_app(now=now),
        "failures": list(failures),
        "silent_servers": silent[:50],
        "silent_count": silent.count(),
        "keys": BouncerKeyPair.objects.order_by("-created"),
        "active_devices": RemotePushDevice.objects.filter(expired_time__isnull=True).count(),
        "credentials": credential_states(),
        "sparkline_width": SPARKLINE_WIDTH,
        "sparkline_height": SPARKLINE_HEIGHT,
    }
    return TemplateResponse(request, "admin/delivery/overview.html", context)
