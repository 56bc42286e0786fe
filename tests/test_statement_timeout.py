"""Every database statement is bounded (DATABASE_STATEMENT_TIMEOUT_SECONDS)."""

import pytest
from django.db import OperationalError, connection


@pytest.mark.django_db
def test_a_statement_that_runs_too_long_is_cancelled_by_the_server() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone() == ("1min",)
        cursor.execute("SET LOCAL statement_timeout = 50")
        with pytest.raises(OperationalError, match="statement timeout"):
            cursor.execute("SELECT pg_sleep(5)")


def test_connections_ask_for_tcp_keepalives() -> None:
    options = connection.settings_dict["OPTIONS"]
    assert options["keepalives"] == 1
    assert options["keepalives_idle"] == 30
