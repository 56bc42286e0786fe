from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("api/v1/remotes/", include("registrations.urls")),
    path("api/v1/remotes/", include("legacy.urls")),
    path("admin/", admin.site.urls),
]
