"""Device channels in the admin: listed read-only, the pushkey never shown whole."""

import pytest
from django.test import Client

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
