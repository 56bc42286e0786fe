"""Notify endpoints: parse, call one service, render (JSON bodies, as Zulip servers send)."""

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from bouncer.errors import success_response
from bouncer.params import parse_json, with_ignored
from delivery import services
from delivery.payloads import E2EENotifyParams, LegacyNotifyParams, TestNotificationParams
from registrations.auth import authenticate_server


@csrf_exempt
@require_POST
def notify_legacy(request: HttpRequest) -> HttpResponse:
    server = authenticate_server(request)
    params, ignored = parse_json(request, LegacyNotifyParams)
    return success_response(
        with_ignored(services.notify_legacy(server=server, params=params), ignored)
    )


@csrf_exempt
@require_POST
def test_notification(request: HttpRequest) -> HttpResponse:
    server = authenticate_server(request)
    params, ignored = parse_json(request, TestNotificationParams)
    services.send_test_notification(server=server, params=params)
    return success_response(with_ignored({}, ignored))


@csrf_exempt
@require_POST
def notify_e2ee(request: HttpRequest) -> HttpResponse:
    server = authenticate_server(request)
    params, ignored = parse_json(request, E2EENotifyParams)
    return success_response(
        with_ignored(services.notify_e2ee(server=server, params=params), ignored)
    )
