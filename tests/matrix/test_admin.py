"""Device channels in the admin: listed read-only, the pushkey never shown whole."""

import uuid

import pytest
from django.test import Client

from delivery.models import DeliveryAttempt
from matrix.models import DeviceChannel

PUSHKEY = "Xp/MzCt8/9DcSNE9cuiaoT5Ac55job3TdLSSmtmYl4A="


@pytest.mark.django_db
def test_the_admin_lists_channels_without_whole_pushkeys(admin_client: Client) -> None:
    row = DeviceChannel.objects.create(
        app_id="com.example.app", pushkey=PUSHKEY, channel="calls", enabled=True
    )

    listing = admin_client.get("/admin/matrix/devicechannel/")
    page = admin_client.get(f"/admin/matrix/devicechannel/{row.pk}/change/")

    assert listing.status_code == page.status_code == 200
    for response in (listing, page):
        assert PUSHKEY not in response.content.decode()
    assert "Xp/MzCt8…" in listing.content.decode()
    assert admin_client.get("/admin/matrix/devicechannel/add/").status_code == 403


@pytest.mark.django_db
def test_the_delivery_log_shows_matrix_deliveries_without_zulip_links(
    admin_client: Client,
) -> None:
    DeliveryAttempt.objects.create(
        batch_id=uuid.uuid4(),
        server_id=0,
        device_id=0,
        protocol="matrix",
        provider="apns",
        app_id="matrix:com.example.app",
        outcome="delivered",
    )

    listing = admin_client.get("/admin/delivery/deliveryattempt/?protocol__exact=matrix")

    assert listing.status_code == 200
    page = listing.content.decode()
    assert "matrix:com.example.app" in page
    assert "Matrix homeserver" in page
    assert "remotepushdevicetoken/0/" not in page
