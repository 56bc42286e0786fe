"""`POST push/e2ee/register`: a phone's sealed PushRegistration, forwarded by its server."""

from typing import Annotated, Any, TypedDict

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from pydantic import Field

from bouncer.errors import BouncerError, ErrorCode, success_response
from bouncer.params import Params, parse_form, with_ignored
from registrations import devices
from registrations.auth import authenticate_server
from registrations.lookups import ServerInfo
from registrations.models import RemoteZulipServer


class RegisterDeviceParams(Params):
    realm_uuid: str = Field(max_length=64)
    bouncer_public_key: str = Field(max_length=64)
    encrypted_push_registration: str = Field(max_length=16 * 1024)
    # FL 468+ sends token_id; FL 406-467 sends push_account_id (a JSON integer) instead.
    token_id: str | None = Field(default=None, max_length=64)
    push_account_id: Annotated[int, Field(ge=0)] | None = None


class _DeviceFields(TypedDict):
    realm_uuid: str
    bouncer_public_key: str
    encrypted_push_registration: str
    token_id: str | None


def _fields(params: RegisterDeviceParams) -> _DeviceFields:
    """What registers a device, shared by the view and the event loop's endpoint."""
    if params.token_id is None and params.push_account_id is None:
        raise BouncerError(
            "Missing 'token_id' argument",
            code=ErrorCode.REQUEST_VARIABLE_MISSING,
            data={"var_name": "token_id"},
        )
    return {
        "realm_uuid": params.realm_uuid,
        "bouncer_public_key": params.bouncer_public_key,
        "encrypted_push_registration": params.encrypted_push_registration,
        "token_id": params.token_id,
    }


def _answer(registered: devices.Registered) -> dict[str, Any]:
    # 11.x servers assert an integer device_id; 12.x servers ignore the extra key.
    return {"device_id": registered.device_id}


def register(*, server: RemoteZulipServer, params: RegisterDeviceParams) -> dict[str, Any]:
    return _answer(devices.register_device(server=server, **_fields(params)))


@csrf_exempt
@require_POST
def register_push_device(request: HttpRequest) -> HttpResponse:
    server = authenticate_server(request)
    params, ignored = parse_form(request, RegisterDeviceParams)
    return success_response(with_ignored(register(server=server, params=params), ignored))


async def register_push_device_async(
    server: ServerInfo, params: RegisterDeviceParams
) -> dict[str, Any]:
    """The same, from the event loop (bouncer/endpoints.py)."""
    return _answer(await devices.register_device_async(server=server, **_fields(params)))
