"""Request parameters the way Zulip's typed endpoints read them.

Form requests: a `str` field takes the raw form string; any other type is parsed
from the form string as JSON (`token_kind=2` is the integer 2, `realms=[...]` a list),
as Zulip's `Json[...]` parameters are. JSON requests: the body is one JSON object.
Validation failures become `BouncerError`s with Zulip's messages; unknown parameters
are tolerated and reported back in `ignored_parameters_unsupported`.

Before any model sees them, parameters (names and values, at any depth) are checked for
what no valid request holds and what would fail later, after the request was carried out:
nesting deeper than MAX_JSON_DEPTH, lone surrogates (no UTF-8 encoding exists, so neither
the answer nor a payload could be encoded), NUL characters (PostgreSQL text cannot hold
them; Zulip refuses them too), integers beyond 64 bits and non-finite numbers (no column or
payload takes them). Each is a 400 in Zulip's envelope.
"""

import json
import math
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin

from django.http import HttpRequest
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from bouncer.errors import BouncerError, ErrorCode


class JsonText:
    """Marks a `str` field that Zulip declares `Json[str]`: its form value is JSON text."""


JSON_TEXT = JsonText()

# Zulip's deepest parameter (an analytics row's extra_data, a notification payload) is a
# handful of levels deep; 32 leaves room and stays far below the interpreter's recursion
# limit, which pydantic's validators and json.dumps would otherwise meet.
MAX_JSON_DEPTH = 32
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def _refuse_constant(name: str) -> float:
    # Python's json reads NaN and Infinity, which are not JSON and which no column takes.
    raise ValueError(f"{name} is not JSON")


def loads(text: str | bytes) -> Any:
    """json.loads for request input: any failure, including nesting that exhausts the
    interpreter's stack, is a ValueError."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def check_text(name: str, text: str) -> None:
    """A parameter's name or string value: no NUL, no lone surrogate."""
    if "\x00" in text:
        raise BouncerError(f'Argument "{_printable(name)}" contains NULL (0x00) characters.')
    if _has_surrogate(text):
        raise BouncerError(f'Argument "{_printable(name)}" is not valid Unicode.')


def _printable(name: str) -> str:
    # The name goes back in the message: never the characters it is refused for.
    return name.encode("utf-8", "replace").decode().replace("\x00", "?")


def check_value(name: str, value: Any, depth: int = 0) -> None:
    """Every string, key and number of a parsed parameter value, to MAX_JSON_DEPTH."""
    if depth > MAX_JSON_DEPTH:
        raise BouncerError(f"{_printable(name)} is nested too deeply")
    if isinstance(value, str):
        check_text(name, value)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise BouncerError(f"{_printable(name)} is out of range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BouncerError(f"{_printable(name)} is out of range")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(name, str(key))
            check_value(name, item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            check_value(name, item, depth + 1)


def encodable(value: Any) -> Any:
    """A pydantic AfterValidator for free-form values (payloads): the checks above."""
    try:
        check_value("payload", value)
    except BouncerError as e:
        raise ValueError(e.msg) from None
    return value


class Params(BaseModel):
    """Base of every endpoint's parameter model."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


def _takes_raw_string(annotation: Any) -> bool:
    if annotation is str:
        return True
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return len(args) == 1 and _takes_raw_string(args[0])
    # Annotated[str, ...]: pydantic keeps the metadata apart, but be safe.
    if origin is not None and hasattr(annotation, "__metadata__"):
        return _takes_raw_string(get_args(annotation)[0])
    return False


def _location(loc: tuple[int | str, ...]) -> str:
    name = str(loc[0]) if loc else "request"
    for part in loc[1:]:
        name += f"[{part}]" if isinstance(part, int) else f'["{part}"]'
    return name


_MESSAGES = {
    "int_type": "{var} is not an integer",
    "int_parsing": "{var} is not an integer",
    "int_from_float": "{var} is not an integer",
    "string_type": "{var} is not a string",
    "bool_type": "{var} is not a boolean",
    "bool_parsing": "{var} is not a boolean",
    "list_type": "{var} is not a list",
    "dict_type": "{var} is not a dict",
    "model_type": "{var} is not a dict",
    "dataclass_type": "{var} is not a dict",
    "float_type": "{var} is not a float",
    "greater_than_equal": "{var} is too small",
    "less_than_equal": "{var} is too large",
    "extra_forbidden": "Argument {var} is unexpected",
}


def _error_from(details: ErrorDetails) -> BouncerError:
    var = _location(details["loc"])
    kind = details["type"]
    if kind == "missing":
        return BouncerError(
            f"Missing '{var}' argument",
            code=ErrorCode.REQUEST_VARIABLE_MISSING,
            data={"var_name": var},
        )
    if kind == "string_too_long":
        limit = (details.get("ctx") or {}).get("max_length")
        return BouncerError(f"{var} is too long (limit: {limit} characters)")
    if kind == "string_too_short":
        return BouncerError(f"{var} cannot be blank")
    if kind == "value_error":
        # Raised by our own validators, whose message is already Zulip's text.
        ctx_error = (details.get("ctx") or {}).get("error")
        return BouncerError(str(ctx_error) if ctx_error else f"Invalid {var}")
    template = _MESSAGES.get(kind, "Invalid {var}")
    return BouncerError(template.format(var=var))


def validate[M: BaseModel](model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _error_from(e.errors(include_url=False)[0]) from None


def parse_form[M: Params](request: HttpRequest, model: type[M]) -> tuple[M, list[str]]:
    """The endpoint's parameters from a form body (or query string), and the unknown names."""
    # GET parameters come from the query string, POST ones from the body; Zulip reads both.
    source = request.POST if request.method == "POST" else request.GET
    return parse_form_data(source, model)


def parse_form_data[M: Params](source: Mapping[str, str], model: type[M]) -> tuple[M, list[str]]:
    """`parse_form` from the decoded pairs (the last value of a repeated name, as Django's
    QueryDict gives it)."""
    ignored = sorted(name for name in source if name not in model.model_fields)
    for name in ignored:
        check_text(name, name)
    data: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if name not in source:
            continue
        raw = source[name]
        check_text(name, raw)
        is_json_text = any(isinstance(m, JsonText) for m in field.metadata)
        if _takes_raw_string(field.annotation) and not is_json_text:
            data[name] = raw
            continue
        try:
            data[name] = loads(raw)
        except ValueError:
            # Let the field's type produce Zulip's message ("x is not an integer").
            data[name] = raw
            continue
        check_value(name, data[name])
    return validate(model, data), ignored


def parse_json[M: Params](request: HttpRequest, model: type[M]) -> tuple[M, list[str]]:
    """The endpoint's parameters from a JSON object body, and the unknown top-level names."""
    return parse_json_bytes(request.body, model)


def parse_json_bytes[M: Params](raw: bytes, model: type[M]) -> tuple[M, list[str]]:
    """`parse_json` from the raw body (the endpoints on the event loop)."""
    try:
        body = loads(raw)
    except ValueError:  # UnicodeDecodeError and too-deep nesting too
        raise BouncerError("Malformed JSON") from None
    if not isinstance(body, dict):
        raise BouncerError("Malformed payload")
    ignored = sorted(name for name in body if name not in model.model_fields)
    for name in ignored:
        check_text(name, name)
    for name in model.model_fields:
        if name in body:
            check_value(name, body[name])
    return validate(model, body), ignored


def with_ignored(data: dict[str, Any], ignored: list[str]) -> dict[str, Any]:
    """Zulip's success body lists parameters it did not use; it never fails on them."""
    if ignored:
        data["ignored_parameters_unsupported"] = ignored
    return data
