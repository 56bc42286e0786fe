from django.contrib import admin
from django.urls import include, path

from bouncer import health, metrics

urlpatterns = [
    path("api/v1/remotes/", include("registrations.urls")),
    path("api/v1/remotes/", include("legacy.urls")),
    path("admin/", admin.site.urls),
    path("health", health.health),
    path("ready", health.ready),
    path("metrics", metrics.metrics_view),
]
