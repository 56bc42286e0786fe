"""Server endpoints: registration, transfer, deactivation, analytics (spec part 1, 2 and 8)."""

from typing import Annotated, Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from pydantic import Field

from bouncer.errors import BouncerError, success_response
from bouncer.params import JSON_TEXT, Params, parse_form, parse_json, with_ignored
from registrations import ratelimit, services, transfer
from registrations.analytics import MAX_REALMS_PER_UPLOAD, AuditLogRow, CountRow, RealmRow
from registrations.auth import authenticate_server
from registrations.models import API_KEY_LENGTH, HOSTNAME_MAX_LENGTH, UUID_LENGTH


class RegisterParams(Params):
    zulip_org_id: str
    zulip_org_key: str
    hostname: str = Field(max_length=HOSTNAME_MAX_LENGTH)
    contact_email: str = Field(max_length=254)
    new_org_key: str | None = None


def _fixed_length(name: str, value: str | None, length: int) -> None:
    if value is not None and len(value) != length:
        raise BouncerError(f"{name} is not length {length}")


@csrf_exempt
@require_POST
def register_server(request: HttpRequest) -> HttpResponse:
    ratelimit.enforce_anonymous(request)
    params, ignored = parse_form(request, RegisterParams)
    _fixed_length("zulip_org_id", params.zulip_org_id, UUID_LENGTH)
    _fixed_length("zulip_org_key", params.zulip_org_key, API_KEY_LENGTH)
    _fixed_length("new_org_key", params.new_org_key, API_KEY_LENGTH)
    result = services.register_server(
        zulip_org_id=params.zulip_org_id,
        zulip_org_key=params.zulip_org_key,
        hostname=params.hostname,
        contact_email=params.contact_email,
        new_org_key=params.new_org_key,
    )
    return success_response(with_ignored({"created": result.created}, ignored))


class TransferParams(Params):
    hostname: str = Field(max_length=HOSTNAME_MAX_LENGTH)


@csrf_exempt
@require_POST
def transfer_registration(request: HttpRequest) -> HttpResponse:
    ratelimit.enforce_anonymous(request)
    params, ignored = parse_form(request, TransferParams)
    secret = transfer.prepare_transfer(hostname=params.hostname)
    return success_response(with_ignored({"verification_secret": secret}, ignored))


class VerifyParams(Params):
    hostname: str = Field(max_length=HOSTNAME_MAX_LENGTH)
    access_token: str = Field(max_length=256)


@csrf_exempt
@require_POST
def verify_transfer_challenge(request: HttpRequest) -> HttpResponse:
    ratelimit.enforce_anonymous(request)
    params, ignored = parse_form(request, VerifyParams)
    server_uuid, key = transfer.verify_transfer(
        hostname=params.hostname,
        access_token=params.access_token,
        address=ratelimit.client_address(request),
    )
    return success_response(
        with_ignored({"zulip_org_id": server_uuid, "zulip_org_key": key}, ignored)
    )


class NoParams(Params):
    pass


@csrf_exempt
@require_POST
def deactivate_server(request: HttpRequest) -> HttpResponse:
    server = authenticate_server(request)
    # Zulip sends a JSON `{}`; older callers sent an empty form. Both are fine.
    if request.content_type == "application/json" and request.body:
        _, ignored = parse_json(request, NoParams)
    else:
        _, ignored = parse_form(request, NoParams)
    services.deactivate_server(server=server)
    return success_response(with_ignored({}, ignored))


class AnalyticsParams(Params):
    # JSON text in each form field; rows are validated as Zulip validates them.
    realm_counts: list[CountRow]
    installation_counts: list[CountRow]
    realmauditlog_rows: list[AuditLogRow] | None = None
    realms: list[RealmRow] | None = None
    version: Annotated[str | None, JSON_TEXT] = None
    merge_base: Annotated[str | None, JSON_TEXT] = None
    # RemoteZulipServer.last_api_feature_level is a PostgreSQL integer.
    api_feature_level: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None


@csrf_exempt
@require_POST
def upload_analytics(request: HttpRequest) -> HttpResponse:
    server = authenticate_server(request)
    params, ignored = parse_form(request, AnalyticsParams)
    if params.realms is not None and len(params.realms) > MAX_REALMS_PER_UPLOAD:
        raise BouncerError(f"Too many realms in one upload (limit: {MAX_REALMS_PER_UPLOAD})")

    def rows(items: list[Any] | None) -> list[dict[str, Any]] | None:
        return None if items is None else [item.model_dump() for item in items]

    result = services.upload_analytics(
        server=server,
        realm_counts=rows(params.realm_counts) or [],
        installation_counts=rows(params.installation_counts) or [],
        realmauditlog_rows=rows(params.realmauditlog_rows),
        realms=rows(params.realms),
        version=params.version,
        merge_base=params.merge_base,
        api_feature_level=params.api_feature_level,
    )
    return success_response(with_ignored(result, ignored))


@csrf_exempt
@require_GET
def analytics_status(request: HttpRequest) -> HttpResponse:
    server = authenticate_server(request)
    return success_response(services.analytics_status(server=server))
