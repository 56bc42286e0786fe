"""Legacy token endpoints: register, unregister, unregister/all (form-encoded, authenticated)."""

from typing import Annotated

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from pydantic import Field

from bouncer.errors import success_response
from bouncer.params import INT64_MAX, Params, parse_form, with_ignored
from legacy import services
from registrations.auth import authenticate_server


class UserParams(Params):
    # RemotePushDeviceToken.user_id is a bigint; Zulip's user ids are positive.
    user_id: Annotated[int, Field(ge=0, le=INT64_MAX)] | None = None
    user_uuid: str | None = Field(default=None, max_length=64)
    realm_uuid: str | None = Field(default=None, max_length=64)


class TokenParams(UserParams):
    # Over-long tokens get Zulip's own message from validate_token, not a length error here.
    token: str
    token_kind: int


class RegisterParams(TokenParams):
    ios_app_id: str | None = Field(default=None, max_length=255)


@csrf_exempt
@require_POST
def register_token(request: HttpRequest) -> HttpResponse:
    server = authenticate_server(request)
    params, ignored = parse_form(request, RegisterParams)
    services.register_token(
        server=server,
        token=params.token,
        kind=params.token_kind,
        user_id=params.user_id,
        user_uuid=params.user_uuid,
        realm_uuid=params.realm_uuid,
        ios_app_id=params.ios_app_id,
    )
    return success_response(with_ignored({}, ignored))


@csrf_exempt
@require_POST
def unregister_token(request: HttpRequest) -> HttpResponse:
    server = authenticate_server(request)
    params, ignored = parse_form(request, TokenParams)
    services.unregister_token(
        server=server,
        token=params.token,
        kind=params.token_kind,
        user_id=params.user_id,
        user_uuid=params.user_uuid,
        realm_uuid=params.realm_uuid,
    )
    return success_response(with_ignored({}, ignored))


@csrf_exempt
@require_POST
def unregister_all_tokens(request: HttpRequest) -> HttpResponse:
    server = authenticate_server(request)
    params, ignored = parse_form(request, UserParams)
    services.unregister_all_tokens(
        server=server,
        user_id=params.user_id,
        user_uuid=params.user_uuid,
        realm_uuid=params.realm_uuid,
    )
    return success_response(with_ignored({}, ignored))
