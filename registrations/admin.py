"""Django admin: read-only screens for servers, realms, devices, keys and the audit log.

Rows come from Zulip servers, sealed payloads and the bouncer itself, so none can be added,
edited or deleted by hand; the few things an operator does (deactivate or reactivate a server,
retire a key) are actions that go through the services and the audit log, with the acting
admin named there. Secrets (API key hashes, sealed private keys, whole tokens) are never shown.
"""

from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from bouncer.errors import BouncerError
from registrations import keys, services
from registrations.models import (
    AuditLog,
    BouncerKeyPair,
    RemotePushDevice,
    RemoteRealm,
    RemoteZulipServer,
    acting_as,
)

# Failures worth an operator's look: everything but a delivery and a token the phone dropped.
FAILED_OUTCOMES = ("retry", "gave_up", "config_fault", "rejected")


def truncated_token(token: str) -> str:
    return f"{token[:8]}…" if token else ""


def admin_actor(request: HttpRequest) -> str:
    return f"admin {request.user.get_username()}"


def server_link(server_id: int | None, hostname: str | None) -> str:
    """The server's hostname, linked to its page; the bare id when it no longer exists."""
    if server_id is None:
        return "—"
    if hostname is None:
        return f"server {server_id} (deleted)"
    url = reverse("admin:registrations_remotezulipserver_change", args=[server_id])
    return format_html('<a href="{}">{}</a>', url, hostname)


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Viewing only: no add, change or delete, from the list or a row's page."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ServerFilter(admin.SimpleListFilter):
    """Rows of one Zulip server, chosen by hostname; `server_path` is the lookup to its id."""

    title = "server"
    parameter_name = "server"
    server_path = "server_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        servers = RemoteZulipServer.objects.order_by("hostname").values_list("id", "hostname")
        return [(str(pk), hostname) for pk, hostname in servers]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value and value.isdigit():
            return queryset.filter(**{self.server_path: int(value)})
        return queryset


class RealmServerFilter(ServerFilter):
    server_path = "remote_realm__server_id"


@admin.register(RemoteZulipServer)
class RemoteZulipServerAdmin(ReadOnlyAdmin):
    list_display = (
        "hostname",
        "uuid",
        "contact_email",
        "last_request_datetime",
        "last_version",
        "last_api_feature_level",
        "status",
        "realm_count",
        "legacy_remaining",
        "legacy_tokens_retired",
    )
    list_filter = ("deactivated", "last_api_feature_level")
    search_fields = ("uuid", "hostname", "contact_email")
    exclude = ("api_key_hash",)
    readonly_fields = ("related", "status")
    actions = ("deactivate", "reactivate")
    ordering = ("hostname",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[RemoteZulipServer]:
        queryset: QuerySet[RemoteZulipServer] = super().get_queryset(request)
        return queryset.annotate(
            realm_total=Count("realms", distinct=True),
            legacy_total=Count("legacy_tokens", distinct=True),
        )

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # What is linked to this server first, then its own fields.
        # "status" says active, or deactivated and since when, in words (not a red icon).
        shown_as_status = ("related", "status", "deactivated", "deactivated_at")
        own = [f for f in super().get_fields(request, obj) if f not in shown_as_status]
        return ["related", "status", *own]

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        # The two actions change a server: they need the permission a change would, even
        # though no field can be edited here.
        actions = super().get_actions(request)
        if not request.user.has_perm("registrations.change_remotezulipserver"):
            actions.pop("deactivate", None)
            actions.pop("reactivate", None)
        return actions

    @admin.display(description="realms", ordering="realm_total")
    def realm_count(self, server: RemoteZulipServer) -> int:
        return int(getattr(server, "realm_total", 0))

    @admin.display(description="legacy tokens left", ordering="legacy_total")
    def legacy_remaining(self, server: RemoteZulipServer) -> int:
        return int(getattr(server, "legacy_total", 0))

    @admin.display(description="status", ordering="deactivated")
    def status(self, server: RemoteZulipServer) -> str:
        if not server.deactivated:
            return "active"
        if server.deactivated_at is None:
            return "deactivated"
        return f"deactivated {server.deactivated_at:%Y-%m-%d %H:%M} UTC"

    @admin.display(description="linked records")
    def related(self, server: RemoteZulipServer) -> SafeString:
        from delivery.models import DeliveryAttempt
        from legacy.models import RemotePushDeviceToken

        day_ago = timezone.now() - timedelta(days=1)
        links = [
            (
                "registrations_remoterealm",
                f"server={server.pk}",
                RemoteRealm.objects.filter(server=server).count(),
                ("realm", "realms"),
            ),
            (
                "registrations_remotepushdevice",
                f"server={server.pk}",
                RemotePushDevice.objects.filter(remote_realm__server=server).count(),
                ("E2EE device", "E2EE devices"),
            ),
            (
                "legacy_remotepushdevicetoken",
                f"server={server.pk}",
                RemotePushDeviceToken.objects.filter(server=server).count(),
                ("legacy token", "legacy tokens"),
            ),
            (
                "delivery_deliveryattempt",
                f"server={server.pk}&failed=day",
                DeliveryAttempt.objects.filter(
                    server_id=server.pk, created__gte=day_ago, outcome__in=FAILED_OUTCOMES
                ).count(),
                ("failed delivery in the last day", "failed deliveries in the last day"),
            ),
            (
                "registrations_auditlog",
                f"server={server.pk}",
                AuditLog.objects.filter(server=server).count(),
                ("audit log entry", "audit log entries"),
            ),
        ]
        return format_html_join(
            " · ",
            '<a href="{}?{}">{} {}</a>',
            (
                (reverse(f"admin:{name}_changelist"), query, count, one if count == 1 else many)
                for name, query, count, (one, many) in links
            ),
        )

    @admin.action(description="Deactivate selected servers…")
    def deactivate(
        self, request: HttpRequest, queryset: QuerySet[RemoteZulipServer]
    ) -> HttpResponse | None:
        return self._confirm_then(request, queryset, deactivate=True)

    @admin.action(description="Reactivate selected servers…")
    def reactivate(
        self, request: HttpRequest, queryset: QuerySet[RemoteZulipServer]
    ) -> HttpResponse | None:
        return self._confirm_then(request, queryset, deactivate=False)

    def _confirm_then(
        self, request: HttpRequest, queryset: QuerySet[RemoteZulipServer], *, deactivate: bool
    ) -> HttpResponse | None:
        """A page that names the servers and what will happen; the action runs only when the
        operator confirms there (as Django's own "delete selected" does)."""
        affected = list(queryset.filter(deactivated=not deactivate).order_by("hostname"))
        verb = "Deactivate" if deactivate else "Reactivate"
        if request.POST.get("confirmed") != "yes":
            return TemplateResponse(
                request,
                "admin/registrations/confirm_server_state.html",
                {
                    **self.admin_site.each_context(request),
                    "title": f"{verb} {len(affected)} server(s)?",
                    "opts": self.model._meta,
                    "verb": verb,
                    "action": "deactivate" if deactivate else "reactivate",
                    "deactivate": deactivate,
                    "servers": affected,
                    "unchanged": queryset.count() - len(affected),
                    "selected": [str(pk) for pk in queryset.values_list("pk", flat=True)],
                    "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                },
            )
        changed = 0
        with acting_as(admin_actor(request)):
            for server in affected:
                if deactivate:
                    services.deactivate_server(server=server)
                    changed += 1
                    continue
                try:
                    services.reactivate_server(server=server)
                except BouncerError as e:
                    # Another active server holds the hostname now; say so, do the rest.
                    self.message_user(request, f"{server}: {e.msg}", messages.ERROR)
                    continue
                changed += 1
        self.message_user(request, f"{verb}d {changed} server(s).", messages.SUCCESS)
        return None


@admin.register(RemoteRealm)
class RemoteRealmAdmin(ReadOnlyAdmin):
    list_display = (
        "host",
        "name",
        "uuid",
        "server_hostname",
        "deactivated",
        "last_request_datetime",
    )
    list_filter = (ServerFilter, "deactivated")
    search_fields = ("uuid", "host", "name", "server__hostname")
    list_select_related = ("server",)

    @admin.display(description="server", ordering="server__hostname")
    def server_hostname(self, realm: RemoteRealm) -> str:
        return server_link(realm.server_id, realm.server.hostname)


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
        "realm_link",
        "server_hostname",
        "token_kind",
        "ios_app_id",
        "token_prefix",
        "token_id",
        "created",
        "last_registered",
        "expired_time",
    )
    list_filter = (RealmServerFilter, "token_kind", "ios_app_id", ExpiredFilter)
    search_fields = ("=device_id", "=token_id", "remote_realm__uuid", "remote_realm__host")
    list_select_related = ("remote_realm", "remote_realm__server")
    exclude = ("token",)
    readonly_fields = ("token_prefix",)

    @admin.display(description="token")
    def token_prefix(self, device: RemotePushDevice) -> str:
        return truncated_token(device.token)

    @admin.display(description="realm", ordering="remote_realm__host")
    def realm_link(self, device: RemotePushDevice) -> str:
        realm = device.remote_realm
        url = reverse("admin:registrations_remoterealm_change", args=[realm.pk])
        return format_html('<a href="{}">{}</a>', url, realm.host or realm.name or realm.uuid)

    @admin.display(description="server", ordering="remote_realm__server__hostname")
    def server_hostname(self, device: RemotePushDevice) -> str:
        server = device.remote_realm.server
        return server_link(server.pk, server.hostname)


@admin.register(BouncerKeyPair)
class BouncerKeyPairAdmin(ReadOnlyAdmin):
    list_display = ("public_key", "state", "origin", "created", "retired_at")
    list_filter = ("origin",)
    exclude = ("sealed_private_key",)
    actions = ("retire",)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        if not request.user.has_perm("registrations.change_bouncerkeypair"):
            actions.pop("retire", None)
        return actions

    @admin.display(description="state")
    def state(self, pair: BouncerKeyPair) -> str:
        return "active" if pair.is_active else "retired"

    @admin.action(description="Retire selected keys (refuse registrations sealed to them)")
    def retire(self, request: HttpRequest, queryset: QuerySet[BouncerKeyPair]) -> None:
        chosen = {pair.public_key for pair in queryset if pair.is_active}
        remaining = [
            k for k in keys.list_keys() if k.state == "active" and k.public_key not in chosen
        ]
        if chosen and not remaining:
            # With no active key, every new E2EE registration is refused. The command can
            # still do it (`bouncer_keys retire --force`), deliberately.
            self.message_user(
                request,
                "Not retired: that would leave no active key, and every new E2EE registration "
                "would be refused. Generate a new key first (manage.py bouncer_keys generate).",
                messages.ERROR,
            )
            return
        with acting_as(admin_actor(request)):
            for public_key in sorted(chosen):
                keys.retire_key(public_key=public_key)
        self.message_user(request, f"Retired {len(chosen)} key(s).", messages.SUCCESS)


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    list_display = ("event_time", "event_type", "server_hostname", "actor_display", "extra_data")
    list_filter = ("event_type", ServerFilter)
    date_hierarchy = "event_time"
    search_fields = ("server__hostname", "server__uuid", "actor")
    list_select_related = ("server",)

    @admin.display(description="server", ordering="server__hostname")
    def server_hostname(self, entry: AuditLog) -> str:
        if entry.server_id is None:
            return "—"
        return server_link(entry.server_id, entry.server.hostname if entry.server else None)

    @admin.display(description="by", ordering="actor")
    def actor_display(self, entry: AuditLog) -> str:
        return entry.actor or "not recorded"
