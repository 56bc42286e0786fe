"""Look-ups on the request paths in plain SQL, returned as ordinary model instances.

Every notify and registration starts with the same few look-ups (the server by uuid, the
realm by uuid, the devices of a request). Through the ORM each cost ~0.5 ms of Python to
build and compile the query, against ~0.15 ms for the same statement written once and
reused (bench/README.md). The instances come from `Model.from_db` with the backend's own
converters, exactly as the ORM builds them, so they save, compare and print as usual.
"""

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Field, Model

Converter = Callable[[Any, Any, Any], Any]


@cache
def _columns(
    model: type[Model], vendor: str
) -> tuple[str, list[str], list[tuple[Any, list[Converter]]]]:
    connection = connections[DEFAULT_DB_ALIAS]
    quote = connection.ops.quote_name
    table = model._meta.db_table
    fields = model._meta.concrete_fields
    names = ", ".join(quote(f.column) for f in fields)
    select = f"SELECT {names} FROM {quote(table)}"  # noqa: S608 - names from the model
    converters: list[tuple[Any, list[Converter]]] = []
    for field in fields:
        column = field.get_col(table)
        converters.append(
            (
                column,
                connection.ops.get_db_converters(column) + column.get_db_converters(connection),
            )
        )
    return select, [f.attname for f in fields], converters


def where[M: Model](model: type[M], condition: str, params: Sequence[Any]) -> list[M]:
    """The rows of `model` matching `condition` (SQL with %s placeholders for `params`)."""
    connection = connections[DEFAULT_DB_ALIAS]
    select, names, converters = _columns(model, connection.vendor)
    with connection.cursor() as cursor:
        cursor.execute(f"{select} WHERE {condition}", params)
        fetched = cursor.fetchall()
    instances = []
    for row in fetched:
        values = list(row)
        for i, (column, column_converters) in enumerate(converters):
            for convert in column_converters:
                values[i] = convert(values[i], column, connection)
        instances.append(model.from_db(DEFAULT_DB_ALIAS, names, values))
    return instances


def get_by[M: Model](model: type[M], field_name: str, value: Any) -> M | None:
    """The row whose (unique) `field_name` equals `value`, or None."""
    connection = connections[DEFAULT_DB_ALIAS]
    field = model._meta.get_field(field_name)
    assert isinstance(field, Field)  # a concrete column, not a relation's reverse side
    found = where(
        model,
        f"{connection.ops.quote_name(field.column)} = %s LIMIT 1",
        [field.get_db_prep_value(value, connection)],
    )
    return found[0] if found else None
