from django.urls import path

from registrations import e2ee_views, views

urlpatterns = [
    path("server/register", views.register_server),
    path("server/register/transfer", views.transfer_registration),
    path("server/register/verify_challenge", views.verify_transfer_challenge),
    path("server/deactivate", views.deactivate_server),
    path("server/analytics", views.upload_analytics),
    path("server/analytics/status", views.analytics_status),
    path("push/e2ee/register", e2ee_views.register_push_device),
]
