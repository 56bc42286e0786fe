from django.urls import path

from legacy import views

urlpatterns = [
    path("push/register", views.register_token),
    path("push/unregister", views.unregister_token),
    path("push/unregister/all", views.unregister_all_tokens),
]
