"""Legacy device token endpoints. (Being written.)"""

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from bouncer.errors import BouncerError, ErrorCode


def _todo(request: HttpRequest) -> HttpResponse:
    raise BouncerError("Not implemented yet", code=ErrorCode.NOT_FOUND, status=404)


register_token = csrf_exempt(_todo)
unregister_token = csrf_exempt(_todo)
unregister_all_tokens = csrf_exempt(_todo)
