from django.contrib import admin
from django.urls import include, path

from bouncer import health, metrics
from delivery.admin import overview_view

urlpatterns = [
    path("api/v1/remotes/", include("registrations.urls")),
    path("api/v1/remotes/", include("legacy.urls")),
    # The Matrix push gateway's device channels; its notify is on the loop (bouncer/asgi.py).
    path("_matrix/push/v1/", include("matrix.urls")),
    # The operator's overview, a page of the admin (staff only, like the rest of it).
    path("admin/overview/", admin.site.admin_view(overview_view), name="bouncer_overview"),
    path("admin/", admin.site.urls),
    path("health", health.health),
    path("ready", health.ready),
    path("metrics", metrics.metrics_view),
]
