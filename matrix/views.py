"""The device-channel endpoints (Django: not on the notify path). Errors in Matrix's shape."""

import json
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from bouncer.errors import MatrixError, matrix_error_response
from matrix import access, channels


def _answer(request: HttpRequest, work: Callable[[], dict[str, Any]]) -> HttpResponse:
    try:
        access.check(
            access.forwarded_address(
                str(request.META.get("REMOTE_ADDR") or ""),
                request.META.get("HTTP_X_FORWARDED_FOR"),
            )
        )
        data = work()
    except MatrixError as e:
        return matrix_error_response(e)
    return HttpResponse(json.dumps(data), content_type="application/json")


def _method_not_allowed(allowed: str) -> HttpResponse:
    return matrix_error_response(
        MatrixError(
            "Method not allowed", errcode="M_UNRECOGNIZED", status=405, headers={"Allow": allowed}
        )
    )


def _json_body(request: HttpRequest) -> Any:
    try:
        return json.loads(request.body)
    except (ValueError, RecursionError):
        raise MatrixError("Expected a JSON object", errcode="M_NOT_JSON") from None


# Homeservers and Fachdienste send no CSRF token: there is no session to protect here.
@csrf_exempt
def available_channels(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return _method_not_allowed("GET")
    return _answer(request, lambda: channels.available(app_id=request.GET.get("app_id")))


@csrf_exempt
def device_channels(request: HttpRequest, pushkey: str) -> HttpResponse:
    app_id = request.GET.get("app_id")
    if request.method == "GET":
        return _answer(request, lambda: channels.device_channels(app_id=app_id, pushkey=pushkey))
    if request.method == "POST":

        def work() -> dict[str, Any]:
            body = _json_body(request)
            named = body.get("app_id") if isinstance(body, dict) else None
            return channels.update(
                app_id=named if isinstance(named, str) else app_id, pushkey=pushkey, body=body
            )

        return _answer(request, work)
    return _method_not_allowed("GET, POST")


@csrf_exempt
def unrecognized(request: HttpRequest) -> HttpResponse:
    return matrix_error_response(
        MatrixError("Unrecognized request", errcode="M_UNRECOGNIZED", status=404)
    )
