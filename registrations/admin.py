"""Django admin: read-mostly screens for servers, realms, devices, keys and the audit log.

Rows that come from sealed payloads or from servers themselves cannot be added by hand;
secrets (API key hashes, sealed private keys, whole tokens) are never displayed.
"""

from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from bouncer.errors import BouncerError
from registrations import keys, services
from registrations.models import (
    AuditLog,
    BouncerKeyPair,
    RemotePushDevice,
    RemoteRealm,
    RemoteZulipServer,
)


def truncated_token(token: str) -> str:
    return f"{token[:8]}…" if token else ""


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RemoteZulipServer)
class RemoteZulipServerAdmin(ReadOnlyAdmin):
    list_display = (
        "hostname",
        "uuid",
        "contact_email",
        "last_request_datetime",
        "last_version",
        "last_api_feature_level",
        "deactivated",
        "realm_count",
        "legacy_remaining",
        "legacy_tokens_retired",
    )
    list_filter = ("deactivated", "last_api_feature_level")
    search_fields = ("uuid", "hostname", "contact_email")
    exclude = ("api_key_hash",)
    actions = ("deactivate", "reactivate")
    ordering = ("hostname",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[RemoteZulipServer]:
        queryset: QuerySet[RemoteZulipServer] = super().get_queryset(request)
        return queryset.annotate(
            realm_total=Count("realms", distinct=True),
            legacy_total=Count("legacy_tokens", distinct=True),
        )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a server would take its realms, devices and audit trail with it; Zulip's
        # model is deactivation (its legacy tokens go after LEGACY_DEACTIVATED_RETENTION_DAYS).
        return False

    @admin.display(description="realms", ordering="realm_total")
    def realm_count(self, server: RemoteZulipServer) -> int:
        return int(getattr(server, "realm_total", 0))

    @admin.display(description="legacy tokens left", ordering="legacy_total")
    def legacy_remaining(self, server: RemoteZulipServer) -> int:
        return int(getattr(server, "legacy_total", 0))

    @admin.action(description="Deactivate selected servers")
    def deactivate(self, request: HttpRequest, queryset: QuerySet[RemoteZulipServer]) -> None:
        for server in queryset:
            services.deactivate_server(server=server)
        self.message_user(request, f"Deactivated {queryset.count()} server(s).", messages.SUCCESS)

    @admin.action(description="Reactivate selected servers")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[RemoteZulipServer]) -> None:
        reactivated = 0
        for server in queryset:
            try:
                services.reactivate_server(server=server)
            except BouncerError as e:
                # Another active server holds the hostname now; say so, reactivate the rest.
                self.message_user(request, f"{server}: {e.msg}", messages.ERROR)
                continue
            reactivated += 1
        self.message_user(request, f"Reactivated {reactivated} server(s).", messages.SUCCESS)


@admin.register(RemoteRealm)
class RemoteRealmAdmin(ReadOnlyAdmin):
    list_display = ("host", "name", "uuid", "server", "deactivated", "last_request_datetime")
    list_filter = ("deactivated",)
    search_fields = ("uuid", "host", "name", "server__hostname")
    list_select_related = ("server",)


class ExpiredFilter(admin.SimpleListFilter):
    title = "expired"
    parameter_name = "expired"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(expired_time__isnull=False)
        if self.value() == "no":
            return queryset.filter(expired_time__isnull=True)
        return queryset


@admin.register(RemotePushDevice)
class RemotePushDeviceAdmin(ReadOnlyAdmin):
    list_display = (
        "device_id",
        "remote_realm",
        "token_kind",
        "ios_app_id",
        "token_prefix",
        "token_id",
        "created",
        "last_registered",
        "expired_time",
    )
    list_filter = ("token_kind", "ios_app_id", ExpiredFilter)
    search_fields = ("=device_id", "=token_id", "remote_realm__uuid", "remote_realm__host")
    list_select_related = ("remote_realm",)
    exclude = ("token",)
    readonly_fields = ("token_prefix",)

    @admin.display(description="token")
    def token_prefix(self, device: RemotePushDevice) -> str:
        return truncated_token(device.token)


@admin.register(BouncerKeyPair)
class BouncerKeyPairAdmin(ReadOnlyAdmin):
    list_display = ("public_key", "state", "origin", "created", "retired_at")
    list_filter = ("origin",)
    exclude = ("sealed_private_key",)
    actions = ("retire",)

    @admin.display(description="state")
    def state(self, pair: BouncerKeyPair) -> str:
        return "active" if pair.is_active else "retired"

    @admin.action(description="Retire selected keys (refuse registrations sealed to them)")
    def retire(self, request: HttpRequest, queryset: QuerySet[BouncerKeyPair]) -> None:
        for pair in queryset:
            keys.retire_key(public_key=pair.public_key)
        self.message_user(request, f"Retired {queryset.count()} key(s).", messages.SUCCESS)


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    list_display = ("event_time", "event_type", "server", "extra_data")
    list_filter = ("event_type",)
    date_hierarchy = "event_time"
    search_fields = ("server__hostname", "server__uuid")
    list_select_related = ("server",)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
