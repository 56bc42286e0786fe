"""E2EE device registration endpoint. (Being written.)"""

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from bouncer.errors import BouncerError, ErrorCode


@csrf_exempt
def register_push_device(request: HttpRequest) -> HttpResponse:
    raise BouncerError("Not implemented yet", code=ErrorCode.NOT_FOUND, status=404)
