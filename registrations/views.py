"""Server endpoints: registration, transfer, deactivation, analytics. (Being written.)"""

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from bouncer.errors import BouncerError, ErrorCode


def _todo(request: HttpRequest) -> HttpResponse:
    raise BouncerError("Not implemented yet", code=ErrorCode.NOT_FOUND, status=404)


register_server = csrf_exempt(_todo)
transfer_registration = csrf_exempt(_todo)
verify_transfer_challenge = csrf_exempt(_todo)
deactivate_server = csrf_exempt(_todo)
upload_analytics = csrf_exempt(_todo)
analytics_status = csrf_exempt(_todo)
