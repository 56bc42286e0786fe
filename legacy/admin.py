"""Admin for legacy tokens: what remains per server while devices move to E2EE."""

from django.contrib import admin

from legacy.models import RemotePushDeviceToken
from registrations.admin import ReadOnlyAdmin, ServerFilter, server_link, truncated_token


@admin.register(RemotePushDeviceToken)
class RemotePushDeviceTokenAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "server_hostname",
        "remote_realm",
        "kind",
        "ios_app_id",
        "token_prefix",
        "created",
    )
    list_filter = (ServerFilter, "kind", "ios_app_id")
    search_fields = ("=id", "server__hostname", "server__uuid", "=user_uuid", "=user_id")
    list_select_related = ("server", "remote_realm")
    exclude = ("token",)
    readonly_fields = ("token_prefix",)

    @admin.display(description="token")
    def token_prefix(self, token: RemotePushDeviceToken) -> str:
        return truncated_token(token.token)

    @admin.display(description="server", ordering="server__hostname")
    def server_hostname(self, token: RemotePushDeviceToken) -> str:
        return server_link(token.server_id, token.server.hostname)
