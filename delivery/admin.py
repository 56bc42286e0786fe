"""Admin for the delivery log: "the bouncer said 200, what happened to my notification?"."""

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.utils import timezone

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
        "device_id",
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

    @admin.display(description="server", ordering="server_hostname_value")
    def server_hostname(self, attempt: DeliveryAttempt) -> str:
        return server_link(attempt.server_id, getattr(attempt, "server_hostname_value", None))
