"""JSON Schema to harmony's TypeScript-like tool signatures, as openai-harmony 0.0.8 writes them.

This follows openai-harmony's renderer rule for rule, quirks included, because gpt-oss was trained
on its output: ``anyOf`` renders as ``any``, multi-line descriptions are not re-prefixed with
``//``, ``oneOf`` at a property renders one ``| variant`` per line, defaults print in
``serde_json``'s compact form (its float formatting included), and namespaces come in
alphabetical order of their keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gptoss_agent.agent.messages import ResponseFormat, ToolNamespaceConfig

__all__ = ["json_schema_to_typescript", "json_value_text", "response_formats_section", "tools_section"]

_MISSING: Any = object()


def _get(value: Any, key: str) -> Any:
    """``serde_json::Value::get``: the member of an object, or _MISSING (a JSON null stays None)."""
    if isinstance(value, dict):
        return value.get(key, _MISSING)
    return _MISSING


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _float_text(x: float) -> str:
    """Format a float as serde_json does (the ``ryu`` crate's shortest round-trip form)."""
    if x == 0.0:
        return "-0.0" if str(x).startswith("-") else "0.0"
    sign = "-" if x < 0 else ""
    mantissa, _, exp_text = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    exponent = (int(exp_text) if exp_text else 0) - len(frac)
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    length = len(digits)
    kk = length + exponent  # 10^(kk-1) <= |x| < 10^kk
    if exponent >= 0 and kk <= 16:
        body = digits + "0" * exponent + ".0"
    elif 0 < kk <= 16:
        body = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        body = "0." + "0" * -kk + digits
    elif length == 1:
        body = f"{digits}e{kk - 1}"
    else:
        body = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + body


def json_value_text(value: Any) -> str:
    """A JSON value as ``serde_json``'s ``Display`` writes it: compact, key order kept, UTF-8."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if -(2**63) <= value < 2**64:
            return str(value)
        return _float_text(float(value))
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        return (
            "{" + ",".join(f"{json_value_text(str(k))}:{json_value_text(v)}" for k, v in value.items()) + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ",".join(json_value_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _is_enum(schema: Any) -> bool:
    values = _get(schema, "enum")
    return isinstance(values, list) and len(values) > 0


def _nullable(schema: Any) -> bool:
    return _get(schema, "nullable") is True


def _default_comment(schema: Any, default: Any, *, bare_enum_string: bool) -> str:
    """``default: ...`` as openai-harmony words it (strings raw; enum strings bare at properties)."""
    if isinstance(default, str) and not _is_enum(schema):
        return f'default: "{default}"'
    if isinstance(default, str) and bare_enum_string:
        return f"default: {default}"
    return f"default: {json_value_text(default)}"


def _variant_type(variant: Any, indent: str) -> str:
    """One ``oneOf`` variant's type, one level deeper, with `` | null`` when it is nullable."""
    type_str = json_schema_to_typescript(variant, indent + "   ")
    if _nullable(variant) and "null" not in type_str:
        type_str += " | null"
    return type_str


def json_schema_to_typescript(schema: Any, indent: str = "") -> str:
    """Render a JSON Schema as openai-harmony's TypeScript-like type (``{\\nname: string,\\n}``)."""
    one_of = _get(schema, "oneOf")
    if isinstance(one_of, list):
        out: list[str] = []
        for variant in one_of:
            out.append(f"\n{indent} | ")
            out.append(_variant_type(variant, indent))
            comments = []
            desc = _str(_get(variant, "description"))
            if desc is not None:
                comments.append(desc)
            default = _get(variant, "default")
            if default is not _MISSING:
                comments.append(_default_comment(variant, default, bare_enum_string=False))
            if comments:
                out.append(" // " + " ".join(comments))
        return "".join(out)

    types = _get(schema, "type")
    if isinstance(types, list):
        names = ["number" if t == "integer" else t for t in types if isinstance(t, str)]
        if names:
            return " | ".join(names)

    if not isinstance(types, str):
        return "any"
    if types == "object":
        return _object_to_typescript(schema, indent)
    if types == "string":
        values = _get(schema, "enum")
        if isinstance(values, list):
            quoted = [f'"{v}"' for v in values if isinstance(v, str)]
            if quoted:
                return " | ".join(quoted)
        return "string"
    if types in ("number", "integer"):
        return "number"
    if types == "boolean":
        return "boolean"
    if types == "array":
        items = _get(schema, "items")
        if items is not _MISSING:
            return json_schema_to_typescript(items, indent) + "[]"
        return "Array<any>"
    return "any"


def _object_to_typescript(schema: Any, indent: str) -> str:
    out: list[str] = []
    desc = _str(_get(schema, "description"))
    if desc is not None:
        out.append(f"{indent}// {desc}\n")
    out.append("{\n")
    props = _get(schema, "properties")
    if isinstance(props, dict):
        required_raw = _get(schema, "required")
        required = (
            {r for r in required_raw if isinstance(r, str)} if isinstance(required_raw, list) else set()
        )
        for key, val in props.items():
            optional = "" if key in required else "?"
            title = _str(_get(val, "title"))
            if title is not None:
                out.append(f"{indent}// {title}\n{indent}//\n")
            one_of = _get(val, "oneOf")
            if one_of is _MISSING:
                prop_desc = _str(_get(val, "description"))
                if prop_desc is not None:
                    out.append(f"{indent}// {prop_desc}\n")
            examples = _get(val, "examples")
            if isinstance(examples, list) and examples:
                out.append(f"{indent}// Examples:\n")
                out.extend(f'{indent}// - "{ex}"\n' for ex in examples if isinstance(ex, str))
            if isinstance(one_of, list):
                out.append(_one_of_property(key, val, one_of, optional, indent))
                continue
            type_str = json_schema_to_typescript(val, indent + "    ")
            if _nullable(val) and "null" not in type_str:
                type_str += " | null"
            out.append(f"{indent}{key}{optional}: {type_str},")
            if one_of is _MISSING:
                default = _get(val, "default")
                if default is not _MISSING:
                    out.append(" // " + _default_comment(val, default, bare_enum_string=True))
            out.append("\n")
    out.append(f"{indent}}}")
    return "".join(out)


def _one_of_property(key: str, val: Any, variants: list[Any], optional: str, indent: str) -> str:
    out: list[str] = []
    prop_desc = _str(_get(val, "description"))
    skip_desc = (
        prop_desc is not None and bool(variants) and _str(_get(variants[0], "description")) == prop_desc
    )
    desc_above = False
    if not skip_desc and prop_desc is not None:
        out.append(f"{indent}// {prop_desc}\n")
        desc_above = True
    default = _get(val, "default")
    if default is not _MISSING:
        out.append(f"{indent}// {_default_comment(val, default, bare_enum_string=True)}\n")
    out.append(f"{indent}{key}{optional}:\n")
    for i, variant in enumerate(variants):
        out.append(f"{indent} | ")
        out.append(_variant_type(variant, indent))
        comments = []
        if not (i == 0 and desc_above):
            variant_desc = _str(_get(variant, "description"))
            if variant_desc is not None and variant_desc != prop_desc:
                comments.append(variant_desc)
        variant_default = _get(variant, "default")
        if variant_default is not _MISSING:
            comments.append(_default_comment(variant, variant_default, bare_enum_string=True))
        if comments:
            out.append(" // " + " ".join(comments))
        out.append("\n")
    out.append(f"{indent},\n")
    return "".join(out)


def rust_lines(text: str) -> list[str]:
    """Rust's ``str::lines``: split at ``\\n`` or ``\\r\\n``; a final line ending adds no empty line."""
    if not text:
        return []
    pieces = text.split("\n")
    last = pieces.pop()
    lines = [p[:-1] if p.endswith("\r") else p for p in pieces]
    if last:
        lines.append(last)
    return lines


def tools_section(tools: Mapping[str, ToolNamespaceConfig]) -> str:
    """The ``# Tools`` section: one ``## name`` block per namespace, in key order."""
    sections = ["# Tools"]
    for key in sorted(tools):
        ns = tools[key]
        lines = [f"## {ns.name}\n"]
        if ns.description is not None:
            prefix = "// " if ns.tools else ""
            lines.extend(prefix + line for line in rust_lines(ns.description))
        if ns.tools:
            lines.append(f"namespace {ns.name} {{\n")
            for tool in ns.tools:
                lines.extend(f"// {line}" for line in rust_lines(tool.description))
                if tool.parameters is not None:
                    lines.append(
                        f"type {tool.name} = (_: {json_schema_to_typescript(tool.parameters)}) => any;\n"
                    )
                else:
                    lines.append(f"type {tool.name} = () => any;\n")
            lines.append(f"}} // namespace {ns.name}")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def response_formats_section(formats: list[ResponseFormat]) -> str:
    """``# Response Formats`` as harmony's format guide shows it (openai-harmony has none)."""
    sections = ["# Response Formats"]
    for fmt in formats:
        lines = [f"## {fmt.name}", ""]
        if fmt.description is not None:
            lines.extend(f"// {line}" for line in rust_lines(fmt.description))
        lines.append(json.dumps(fmt.schema, ensure_ascii=False, separators=(",", ":")))
        sections.append("\n".join(lines))
    return "\n\n".join(sections)
