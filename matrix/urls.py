from django.urls import path

from matrix import views

urlpatterns = [
    path("channels", views.available_channels),
    # A base64 pushkey may hold "/" (sent as %2F, decoded before routing).
    path("channels/<path:pushkey>", views.device_channels),
]
