"""Device channels in the admin: read-only, as every row a client or server sent us."""

from django.contrib import admin

from matrix.models import DeviceChannel
from registrations.admin import ReadOnlyAdmin, truncated_token


@admin.register(DeviceChannel)
class DeviceChannelAdmin(ReadOnlyAdmin):
    list_display = ("app_id", "device", "channel", "enabled", "updated")
    list_filter = ("app_id", "channel", "enabled")
    search_fields = ("app_id", "channel")
    # The pushkey is a device token: never shown whole.
    exclude = ("pushkey",)
    readonly_fields = ("device",)

    @admin.display(description="pushkey")
    def device(self, row: DeviceChannel) -> str:
        return truncated_token(row.pushkey)
