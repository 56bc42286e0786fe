from django.urls import path, re_path

from matrix import views

urlpatterns = [
    path("channels", views.available_channels),
    # A base64 pushkey may hold "/" (sent as %2F, decoded before routing).
    path("channels/<path:pushkey>", views.device_channels),
    # Anything else under the gateway's prefix: Matrix's "unrecognized", in its shape.
    re_path(r"^", views.unrecognized),
]
