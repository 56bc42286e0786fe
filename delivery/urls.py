from django.urls import path

from delivery import views

urlpatterns = [
    path("push/notify", views.notify_legacy),
    path("push/test_notification", views.test_notification),
    path("push/e2ee/notify", views.notify_e2ee),
]
