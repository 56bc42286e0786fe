from typing import Any

from django.db import migrations, models
from django.db.models import Count


def refuse_duplicate_active_hostnames(apps: Any, schema_editor: Any) -> None:
    """Name the rows to resolve, rather than fail on the constraint with PostgreSQL's text."""
    server = apps.get_model("registrations", "RemoteZulipServer")
    duplicates = (
        server.objects.filter(deactivated=False)
        .values("hostname")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .values_list("hostname", flat=True)
    )
    if duplicates:
        raise RuntimeError(
            "Several active servers share a hostname; deactivate all but one of each "
            "(Django admin or `manage.py shell`) before migrating: " + ", ".join(duplicates)
        )


class Migration(migrations.Migration):
    dependencies = [
        ("registrations", "0004_audit_actor"),
    ]

    operations = [
        migrations.RunPython(refuse_duplicate_active_hostnames, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="remotezulipserver",
            constraint=models.UniqueConstraint(
                condition=models.Q(("deactivated", False)),
                fields=("hostname",),
                name="unique_active_server_hostname",
            ),
        ),
    ]
