"""JSON Schema from Python type hints and docstrings, and argument checking before a call.

The schemas are written for harmony's renderer (openai-harmony turns them into TypeScript-like
types): ``Optional[X]`` becomes X's schema with ``"nullable": true`` (rendered ``X | null``),
unions of plain types become a type list (``number | string``), other unions become ``oneOf``
when their branches are disjoint (rendered one variant per line) and ``anyOf`` otherwise, and
nested types are inlined (harmony does not follow ``$ref``). :func:`validation_schema` turns the
OpenAPI-style ``nullable`` into plain JSON Schema before validating with ``jsonschema``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import importlib
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

import jsonschema
from gptoss_agent.tools.base import ToolError
from jsonschema.protocols import Validator

__all__ = [
    "ArgumentError",
    "Docstring",
    "check_arguments",
    "coerce",
    "compile_validator",
    "format_path",
    "parse_docstring",
    "signature_schema",
    "type_schema",
    "validation_schema",
]

# --------------------------------------------------------------------------------------------
# Docstrings


@dataclasses.dataclass(frozen=True)
class Docstring:
    """A parsed docstring: the description (everything before the first section) and the
    description of each documented parameter (Google ``Args:``, NumPy ``Parameters``, reST
    ``:param x:``)."""

    description: str
    params: dict[str, str]


_GOOGLE_PARAM_HEADERS = {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments"}
_GOOGLE_ATTR_HEADERS = {"attributes", "fields"}
_GOOGLE_OTHER_HEADERS = {
    "returns",
    "return",
    "yields",
    "yield",
    "raises",
    "raise",
    "examples",
    "example",
    "notes",
    "note",
    "see also",
    "warnings",
    "warning",
    "references",
    "todo",
}
_NUMPY_UNDERLINE = re.compile(r"^\s*-{3,}\s*$")
_REST_FIELD = re.compile(r"^\s*:(\w+)(?:\s+([^:]+?))?:\s*(.*)$")
_GOOGLE_ITEM = re.compile(r"^(\*{0,2}\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> Docstring:
    """Split a docstring into its description and per-parameter descriptions.

    Class docstrings are parsed the same way, with ``Attributes:`` counting as parameters, so a
    dataclass or TypedDict can describe its fields.
    """
    if not doc:
        return Docstring("", {})
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    i = 0
    in_description = True
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        header = stripped[:-1].lower() if stripped.endswith(":") else None
        # NumPy: a header line underlined with dashes.
        if i + 1 < len(lines) and _NUMPY_UNDERLINE.match(lines[i + 1]) and stripped:
            in_description = False
            name = stripped.lower()
            i += 2
            block = []
            while i < len(lines) and not (
                i + 1 < len(lines) and _NUMPY_UNDERLINE.match(lines[i + 1]) and lines[i].strip()
            ):
                block.append(lines[i])
                i += 1
            if name in _GOOGLE_PARAM_HEADERS | _GOOGLE_ATTR_HEADERS | {"other parameters"}:
                params.update(_numpy_params(block))
            continue
        # Google: "Args:" followed by an indented block.
        if header is not None and (
            header in _GOOGLE_PARAM_HEADERS | _GOOGLE_ATTR_HEADERS | _GOOGLE_OTHER_HEADERS
        ):
            in_description = False
            i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or lines[i][:1].isspace()):
                block.append(lines[i])
                i += 1
            if header in _GOOGLE_PARAM_HEADERS | _GOOGLE_ATTR_HEADERS:
                params.update(_google_params(block))
            continue
        # reST: ":param name: text" with indented continuation lines.
        field = _REST_FIELD.match(line)
        if field:
            in_description = False
            kind, arg, text = field.groups()
            i += 1
            more = []
            while i < len(lines) and lines[i][:1].isspace() and lines[i].strip():
                more.append(lines[i].strip())
                i += 1
            if kind in ("param", "parameter", "arg", "argument", "key", "keyword", "ivar", "var") and arg:
                name = arg.split()[-1]
                params[name] = " ".join([text.strip(), *more]).strip()
            continue
        if in_description:
            description.append(line)
        i += 1
    return Docstring("\n".join(description).strip(), params)


def _dedent_block(block: list[str]) -> list[str]:
    indents = [len(line) - len(line.lstrip()) for line in block if line.strip()]
    cut = min(indents, default=0)
    return [line[cut:] if line.strip() else "" for line in block]


def _google_params(block: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    current: str | None = None
    for line in _dedent_block(block):
        if not line.strip():
            continue
        item = _GOOGLE_ITEM.match(line) if not line[:1].isspace() else None
        if item:
            current = item.group(1).lstrip("*")
            params[current] = item.group(3).strip()
        elif current is not None:
            params[current] = f"{params[current]} {line.strip()}".strip()
    return params


def _numpy_params(block: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    names: list[str] = []
    for line in _dedent_block(block):
        if not line.strip():
            continue
        if not line[:1].isspace():
            head = line.split(":", 1)[0]
            names = [n.strip().lstrip("*") for n in head.split(",") if n.strip()]
            for n in names:
                params[n] = ""
        else:
            for n in names:
                params[n] = f"{params[n]} {line.strip()}".strip()
    return params


# --------------------------------------------------------------------------------------------
# Type hints -> JSON Schema

_NoneType = type(None)
_SIMPLE: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _pydantic_base() -> type | None:
    """pydantic's BaseModel when pydantic is installed (it is optional)."""
    module: Any = sys.modules.get("pydantic")
    if module is None:
        try:
            module = importlib.import_module("pydantic")
        except ImportError:
            return None
    return typing.cast(type, module.BaseModel)


def _is_pydantic_model(tp: Any) -> bool:
    base = _pydantic_base()
    return base is not None and isinstance(tp, type) and issubclass(tp, base)


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and typing.is_typeddict(tp)


def _json_default(value: Any) -> Any:
    """A JSON-able form of a default value, or raise TypeError."""
    if isinstance(value, enum.Enum):
        return _json_default(value.value)
    if isinstance(value, tuple):
        return [_json_default(v) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_default(dataclasses.asdict(value))
    json.dumps(value)
    return value


def _with_default(schema: dict[str, Any], default: Any) -> dict[str, Any]:
    try:
        return {**schema, "default": _json_default(default)}
    except (TypeError, ValueError):
        return schema  # not representable in JSON: the model just sees the parameter as optional


def _split_annotated(tp: Any) -> tuple[Any, str | None]:
    """``Annotated[T, "description"]`` (or a pydantic ``Field(description=...)``) -> (T, description)."""
    if get_origin(tp) is typing.Annotated:
        base, *meta = get_args(tp)
        for m in meta:
            if isinstance(m, str):
                return base, m
            desc = getattr(m, "description", None)
            if isinstance(desc, str):
                return base, desc
        return base, None
    return tp, None


def _json_types(schema: dict[str, Any]) -> set[str] | None:
    t = schema.get("type")
    if t is None:
        if "enum" in schema:
            found = {_enum_json_type(v) for v in schema["enum"]}
            return {k for k in found if k is not None} if None not in found else None
        return None
    names = {t} if isinstance(t, str) else set(t)
    if "integer" in names:
        names.add("number")
    if schema.get("nullable"):
        names.add("null")
    return names


def _enum_json_type(value: Any) -> str | None:
    if value is None:
        return "null"
    for py, name in ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string")):
        if isinstance(value, py):
            return name
    return None


def _object_schema(
    properties: dict[str, dict[str, Any]], required: list[str], *, closed: bool
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    return schema


def type_schema(tp: Any, _seen: tuple[Any, ...] = ()) -> dict[str, Any]:
    """The JSON Schema of one type hint. Raises TypeError for a hint it cannot express."""
    tp, description = _split_annotated(tp)
    schema = _type_schema(tp, _seen)
    if description:
        schema = {**schema, "description": description}
    return schema


def _type_schema(tp: Any, seen: tuple[Any, ...]) -> dict[str, Any]:
    if tp is Any or tp is inspect.Parameter.empty or tp is object:
        return {}
    if tp is _NoneType or tp is None:
        return {"type": "null"}
    if tp in _SIMPLE:
        return {"type": _SIMPLE[tp]}
    if tp is dt.datetime:
        return {"type": "string", "format": "date-time"}
    if tp is dt.date:
        return {"type": "string", "format": "date"}
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Literal:
        values = [v.value if isinstance(v, enum.Enum) else v for v in args]
        return _enum_schema(values)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_schema([m.value for m in tp])
    if origin is Union or origin is types.UnionType:
        return _union_schema(args, seen)
    if tp in (list, set, frozenset, tuple) or origin in (list, set, frozenset, Sequence, typing.Sequence):
        if origin is None:
            return {"type": "array"}
        return {"type": "array", "items": type_schema(args[0], seen)}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": type_schema(args[0], seen)}
        items = [type_schema(a, seen) for a in args]
        schema: dict[str, Any] = {"type": "array", "prefixItems": items}
        if items and all(i == items[0] for i in items):
            schema["items"] = items[0]
        else:
            schema["items"] = False
        schema["minItems"] = schema["maxItems"] = len(items)
        return schema
    if tp is dict or origin in (dict, Mapping, typing.Mapping):
        if origin is None or not args:
            return {"type": "object"}
        key, value = args
        if key is not str:
            raise TypeError(f"dict keys must be str for a JSON object, not {key!r}")
        value_schema = type_schema(value, seen)
        return (
            {"type": "object", "additionalProperties": value_schema} if value_schema else {"type": "object"}
        )
    if isinstance(tp, type) and (dataclasses.is_dataclass(tp) or _is_typeddict(tp) or _is_pydantic_model(tp)):
        if tp in seen:  # a recursive type: stop at an untyped object
            return {"type": "object"}
        return _class_schema(tp, (*seen, tp))
    raise TypeError(f"cannot derive a JSON schema from the type {tp!r}")


def _enum_schema(values: list[Any]) -> dict[str, Any]:
    kinds = {_enum_json_type(v) for v in values}
    if kinds == {"string"}:
        return {"type": "string", "enum": values}
    if kinds == {"boolean"}:
        return {"type": "boolean", "enum": values}
    if kinds == {"number"}:
        kind = "integer" if all(isinstance(v, int) for v in values) else "number"
        return {"type": kind, "enum": values}
    return {"enum": values}


def _union_schema(args: tuple[Any, ...], seen: tuple[Any, ...]) -> dict[str, Any]:
    nullable = any(a is _NoneType or a is None for a in args)
    members = [type_schema(a, seen) for a in args if a is not _NoneType and a is not None]
    if not members:
        return {"type": "null"}
    if any(m == {} for m in members):
        return {}
    if len(members) == 1:
        return {**members[0], "nullable": True} if nullable else members[0]
    if all(set(m) == {"type"} and isinstance(m["type"], str) for m in members):
        names = list(dict.fromkeys(m["type"] for m in members))
        return {"type": [*names, "null"] if nullable else names}
    if nullable:
        members[-1] = {**members[-1], "nullable": True}
    kinds = [_json_types(m) for m in members]
    disjoint = all(k is not None for k in kinds) and sum(len(k or ()) for k in kinds) == len(
        set().union(*(k or set() for k in kinds))
    )
    return {"oneOf" if disjoint else "anyOf": members}


def _class_schema(tp: type, seen: tuple[Any, ...]) -> dict[str, Any]:
    doc = parse_docstring(tp.__doc__ if tp.__doc__ and not tp.__doc__.startswith(tp.__name__ + "(") else None)
    properties: dict[str, dict[str, Any]] = {}
    required: list[str] = []
    closed = True
    if _is_pydantic_model(tp):
        model: Any = tp
        for name, info in model.model_fields.items():
            key = info.alias or name
            prop = type_schema(info.annotation, seen)
            desc = info.description or doc.params.get(name)
            if desc:
                prop = {**prop, "description": desc}
            if info.is_required():
                required.append(key)
            elif info.default_factory is None:
                prop = _with_default(prop, info.default)
            properties[key] = prop
        closed = model.model_config.get("extra") == "forbid"
        return _object_schema(properties, required, closed=closed)
    hints = typing.get_type_hints(tp, include_extras=True)
    if dataclasses.is_dataclass(tp):
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            prop = type_schema(hints.get(f.name, Any), seen)
            desc = f.metadata.get("description") or doc.params.get(f.name)
            if desc and "description" not in prop:
                prop = {**prop, "description": desc}
            if f.default is not dataclasses.MISSING:
                prop = _with_default(prop, f.default)
            elif f.default_factory is dataclasses.MISSING:
                required.append(f.name)
            properties[f.name] = prop
        return _object_schema(properties, required, closed=True)
    # TypedDict: Required/NotRequired read from the hints (``__required_keys__`` is wrong when
    # the annotations are strings, as under ``from __future__ import annotations``).
    total = getattr(tp, "__total__", True)
    for name, hint in hints.items():
        hint_base, is_required = hint, total
        while get_origin(hint_base) in (typing.Required, typing.NotRequired, typing.Annotated):
            if get_origin(hint_base) is not typing.Annotated:
                is_required = get_origin(hint_base) is typing.Required
            hint_base = get_args(hint_base)[0]
        prop = type_schema(hint_base, seen)
        if doc.params.get(name) and "description" not in prop:
            prop = {**prop, "description": doc.params[name]}
        if is_required:
            required.append(name)
        properties[name] = prop
    return _object_schema(properties, required, closed=True)


def signature_schema(
    fn: Callable[..., Any], *, skip_first: bool = False, descriptions: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ``object`` schema of a function's parameters (``self`` left out when ``skip_first``).

    Parameters without a default are required; defaults that JSON can express appear as
    ``default``. ``**kwargs`` opens the object to extra properties; ``*args`` is refused.
    """
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    descriptions = descriptions or {}
    properties: dict[str, dict[str, Any]] = {}
    required: list[str] = []
    closed = True
    params = list(sig.parameters.values())
    if skip_first:
        params = params[1:]
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            raise TypeError(f"{fn.__qualname__}: *{p.name} cannot be given as JSON arguments")
        if p.kind is p.VAR_KEYWORD:
            closed = False
            continue
        if p.kind is p.POSITIONAL_ONLY:
            raise TypeError(
                f"{fn.__qualname__}: positional-only parameter {p.name!r} cannot be named in JSON"
            )
        try:
            prop = type_schema(hints.get(p.name, Any))
        except TypeError as e:
            raise TypeError(f"{fn.__qualname__}: parameter {p.name!r}: {e}") from None
        if descriptions.get(p.name) and "description" not in prop:
            prop = {"description": descriptions[p.name], **prop}
        elif "description" in prop:
            prop = {
                "description": prop["description"],
                **{k: v for k, v in prop.items() if k != "description"},
            }
        if p.default is p.empty:
            required.append(p.name)
        else:
            prop = _with_default(prop, p.default)
        properties[p.name] = prop
    return _object_schema(properties, required, closed=closed)


# --------------------------------------------------------------------------------------------
# JSON values -> the Python types the function asked for


def coerce(value: Any, tp: Any) -> Any:
    """Turn a validated JSON value into the annotated Python type (Enum members, dataclasses,
    pydantic models, tuples, sets, dates). Raises ValueError or TypeError when it cannot."""
    tp, _ = _split_annotated(tp)
    if value is None or tp is Any or tp is inspect.Parameter.empty:
        return value
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is dt.datetime and isinstance(value, str):
        return dt.datetime.fromisoformat(value)
    if tp is dt.date and isinstance(value, str):
        return dt.date.fromisoformat(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if origin is Literal:
        for a in args:
            if isinstance(a, enum.Enum) and a.value == value:
                return a
        return value
    if origin is Union or origin is types.UnionType:
        for a in args:
            if a is not _NoneType and _matches(value, a):
                return coerce(value, a)
        return value
    if isinstance(value, list) and origin in (list, set, frozenset, Sequence, typing.Sequence) and args:
        items = [coerce(v, args[0]) for v in value]
        return origin(items) if origin in (set, frozenset) else items
    if isinstance(value, list) and tp in (set, frozenset, tuple):
        return tp(value)
    if isinstance(value, list) and origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0]) for v in value)
        return tuple(coerce(v, a) for v, a in zip(value, args, strict=False))
    if isinstance(value, dict) and origin in (dict, Mapping, typing.Mapping) and len(args) == 2:
        return {k: coerce(v, args[1]) for k, v in value.items()}
    if isinstance(value, dict) and isinstance(tp, type):
        if _is_pydantic_model(tp):
            return typing.cast(Any, tp).model_validate(value)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            return tp(**{k: coerce(v, hints.get(k, Any)) for k, v in value.items()})
        if _is_typeddict(tp):
            hints = typing.get_type_hints(tp)
            return {k: coerce(v, hints.get(k, Any)) for k, v in value.items()}
    return value


def _matches(value: Any, tp: Any) -> bool:
    """Whether a JSON value could be the given type (to pick a Union branch)."""
    try:
        validator = _type_validator(tp)
    except TypeError:  # unhashable or unsupported: fall back to an uncached check
        try:
            validator = compile_validator(validation_schema(type_schema(tp)))
        except TypeError:
            return False
    return bool(validator.is_valid(value))


@functools.lru_cache(maxsize=256)
def _type_validator(tp: Any) -> Validator:
    return compile_validator(validation_schema(type_schema(tp)))


# --------------------------------------------------------------------------------------------
# Validation


def validation_schema(schema: Any) -> Any:
    """The schema to validate with: OpenAPI's ``"nullable": true`` (which harmony renders as
    ``| null``) rewritten as ``anyOf`` with ``{"type": "null"}``, recursively."""
    if isinstance(schema, list):
        return [validation_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        k: validation_schema(v) if k not in ("enum", "const", "default", "examples") else v
        for k, v in schema.items()
    }
    if out.pop("nullable", False) is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def compile_validator(schema: Mapping[str, Any]) -> Validator:
    """A jsonschema validator for the schema (its ``$schema`` dialect, else Draft 2020-12).
    Raises ``jsonschema.SchemaError`` when the schema itself is invalid."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return typing.cast(Validator, cls(schema))


def format_path(path: Sequence[Any]) -> str:
    """``$``, ``$.city``, ``$.items[2].name``, ``$["odd key"]``: where in the arguments an error is."""
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}"
        else:
            out += f"[{json.dumps(str(part), ensure_ascii=False)}]"
    return out


class ArgumentError(ToolError):
    """The model's arguments are not valid JSON (``kind="invalid_json"``) or break the schema
    (``kind="invalid_arguments"``)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


_MAX_ERRORS = 8
_TYPE_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
}


def check_arguments(body: str, validator: Validator | None, *, name: str) -> dict[str, Any]:
    """Parse the model's JSON arguments and validate them; raise ArgumentError with a message that
    tells the model exactly what was wrong (JSON error position, or each violation's path).

    An empty body stands for ``{}``.
    """
    text = body.strip()
    if not text:
        arguments: Any = {}
    else:
        try:
            arguments = json.loads(text)
        except json.JSONDecodeError as e:
            raise ArgumentError(
                f"Invalid JSON in the arguments for {name}: {e.msg} at line {e.lineno} column {e.colno}"
                f" (char {e.pos}). Send the arguments as one JSON object.",
                "invalid_json",
            ) from None
    if not isinstance(arguments, dict):
        kind = "null" if arguments is None else _TYPE_NAMES.get(type(arguments), type(arguments).__name__)
        raise ArgumentError(
            f"Invalid arguments for {name}: expected a JSON object, got {kind}.", "invalid_arguments"
        )
    if validator is not None:
        errors = list(validator.iter_errors(arguments))
        if errors:
            lines = [f"- {format_path(e.absolute_path)}: {e.message}" for e in errors[:_MAX_ERRORS]]
            if len(errors) > _MAX_ERRORS:
                lines.append(f"- ... and {len(errors) - _MAX_ERRORS} more")
            raise ArgumentError(f"Invalid arguments for {name}:\n" + "\n".join(lines), "invalid_arguments")
    return arguments
