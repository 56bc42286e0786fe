"""Admin for the delivery log: "the bouncer said 200, what happened to my notification?"."""

from django.contrib import admin

from delivery.models import DeliveryAttempt
from registrations.admin import ReadOnlyAdmin


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(ReadOnlyAdmin):
    list_display = (
        "created",
        "server_id",
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
    list_filter = ("outcome", "provider", "protocol", "app_id", "reason")
    search_fields = ("=batch_id", "=device_id", "=server_id", "upstream_id")
    date_hierarchy = "created"
    show_full_result_count = False  # the log is large; counting it all is slow
