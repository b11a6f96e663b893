"""Strict YAML → frozen dataclass loading shared by recipes and targets.

Unknown keys, wrong types and bad enum values are errors that name the file and the key.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import EdgeQwenError


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (was: the last one silently won)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # the base class says what is wrong with it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"duplicate key {key!r} (first on line "
                    f"{seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgeQwenError(f"file not found: {path}", hint="check the path or name") from None
    except IsADirectoryError:
        raise EdgeQwenError(f"expected a YAML file, got a folder: {path}", where=str(path)) from None
    except UnicodeDecodeError as exc:
        raise EdgeQwenError(f"not a UTF-8 text file (byte {exc.start}): {path}", where=str(path),
                            hint="pass a YAML recipe/target file") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise EdgeQwenError(f"malformed YAML: {problem}", where=where, hint="fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise EdgeQwenError("expected a mapping at the top level", where=str(path))
    return data


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp, where: str) -> Any:
    """Check/convert one YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except EdgeQwenError as exc:
                errors.append(exc.what)
        raise EdgeQwenError(errors[0] if errors else f"bad value {value!r}", where=where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise EdgeQwenError(f"expected a list, got {type(value).__name__} {value!r}", where=where)
        (arg,) = typing.get_args(tp)[:1]
        return tuple(coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise EdgeQwenError(f"expected a mapping, got {value!r}", where=where)
        _, vt = typing.get_args(tp)
        return {str(k): coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            known = ", ".join(m.value for m in tp)
            raise EdgeQwenError(f"unknown value {value!r}; known: {known}", where=where) from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EdgeQwenError(f"expected a number, got {value!r}", where=where)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EdgeQwenError(f"expected an integer, got {value!r}", where=where)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise EdgeQwenError(f"expected true/false, got {value!r}", where=where)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise EdgeQwenError(f"expected a string, got {value!r}", where=where)
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported schema type {_type_name(tp)} at {where}")


def from_dict(cls, data: Any, where: str):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and missing required ones."""
    if not isinstance(data, dict):
        raise EdgeQwenError(f"expected a mapping, got {data!r}", where=where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise EdgeQwenError(
            f"unknown key {unknown[0]!r}",
            where=f"{where}.{unknown[0]}",
            hint=f"known keys here: {', '.join(sorted(fields))}",
        )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = coerce(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise EdgeQwenError(f"missing required key {name!r}", where=f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise EdgeQwenError(str(exc), where=where) from None


def to_dict(obj) -> Any:
    """Dataclass → plain JSON/YAML-able data (enums as values)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def file_key(path: Path, key: str = "") -> str:
    """Where in a recipe/target file a key is: `FILE: quantization.block_size` (not `FILE.quantization.block_size`,
    which reads as one file name)."""
    return f"{path}: {key}" if key else str(path)


_EXPECTED = {"an integer": "32", "a number": "0.5", "true/false": "true", "a string": "text", "a list": "[...]",
             "a mapping": "{...}"}


def _field_default(cls, key: str):
    """The dataclass default at a dotted key path (e.g. quantization.block_size), or None."""
    default = None
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        f = {f.name: f for f in dataclasses.fields(cls)}.get(part)
        if f is None:
            return None
        cls = typing.get_type_hints(cls).get(part)
        default = f.default if f.default is not dataclasses.MISSING else None
    return default.value if isinstance(default, enum.Enum) else default


def load_file_schema(cls, data: dict, path: Path):
    """schema.from_dict for a recipe/target file, with errors that say `FILE: key` and, where the schema gave none,
    what to write instead (the known values to pick from, the type expected with an example)."""
    try:
        return from_dict(cls, data, where=str(path))
    except EdgeQwenError as exc:
        key = None
        if exc.where and (exc.where == str(path) or exc.where.startswith(f"{path}.")):
            key = exc.where[len(str(path)):].lstrip(".")
        named = re.match(r"([a-z_][a-z0-9_.]*): unknown value", exc.what)  # a __post_init__ naming its own key
        if named and key is not None:
            key = named.group(1) if not key or named.group(1).startswith(f"{key}.") else f"{key}.{named.group(1)}"
        hint = exc.hint
        leaf = (key or "").rsplit(".", 1)[-1]
        known = re.search(r"unknown value (.+?); known: (.+)$", exc.what)
        expected = re.match(r"expected (an integer|a number|true/false|a string|a list|a mapping), got", exc.what)
        if hint is None and known and key:
            default = _field_default(cls, key)
            values = known.group(2).split(", ")
            example = default if isinstance(default, str) and default in values else values[0]
            hint = f"pick one of the known values, e.g. `{leaf}: {example}`"
        elif hint is None and expected and key:
            default = _field_default(cls, key)
            example = _EXPECTED[expected.group(1)]
            if default is not None and not isinstance(default, (list, tuple, dict)):
                example = str(default).lower() if isinstance(default, bool) else str(default)
            hint = f"{key} takes {expected.group(1)}, e.g. `{leaf}: {example}`"
        elif hint is None and exc.what.startswith("missing required key") and key:
            hint = f"add `{leaf}:` to the file"
        raise EdgeQwenError(exc.what, where=file_key(path, key) if key is not None else exc.where,
                            hint=hint) from None
