"""Strict YAML → frozen dataclass loading shared by recipes and targets.

Unknown keys, wrong types and bad enum values are errors that name the file and the key.
"""

from __future__ import annotations

import dataclasses
import enum
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


class SchemaError(EdgeQwenError):
    """A value the schema refused, with what the field takes: `expected` (a type, "an integer") or `known` (the
    values to pick from). `from_dict` turns those into the fix line, with the field's default as the example."""

    def __init__(self, what: str, *, where: str | None = None, hint: str | None = None, expected: str | None = None,
                 known: tuple[str, ...] | None = None):
        super().__init__(what, where=where, hint=hint)
        self.expected, self.known = expected, known


class UnknownValue(ValueError):
    """A dataclass's `__post_init__` refusing `field`'s value: not one of `known` (`more`: what else it takes)."""

    def __init__(self, field: str, value: Any, known, more: str = ""):
        self.field, self.known = field, tuple(known)
        super().__init__(f"unknown value {value!r}; known: {', '.join(self.known)}{more}")


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
                errors.append(exc)
        if not errors:
            raise SchemaError(f"bad value {value!r}", where=where)
        raise errors[0]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"expected a list, got {type(value).__name__} {value!r}", where=where, expected="a list")
        (arg,) = typing.get_args(tp)[:1]
        return tuple(coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"expected a mapping, got {value!r}", where=where, expected="a mapping")
        _, vt = typing.get_args(tp)
        return {str(k): coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            known = tuple(m.value for m in tp)
            raise SchemaError(f"unknown value {value!r}; known: {', '.join(known)}", where=where, known=known) from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"expected a number, got {value!r}", where=where, expected="a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"expected an integer, got {value!r}", where=where, expected="an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"expected true/false, got {value!r}", where=where, expected="true/false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(f"expected a string, got {value!r}", where=where, expected="a string")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported schema type {_type_name(tp)} at {where}")


def from_dict(cls, data: Any, where: str):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and missing required ones."""
    if not isinstance(data, dict):
        raise SchemaError(f"expected a mapping, got {data!r}", where=where, expected="a mapping")
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
        at = f"{where}.{name}"
        if name in data:
            try:
                kwargs[name] = coerce(data[name], hints[name], at)
            except SchemaError as exc:
                if exc.where != at or exc.hint is not None:  # deeper down: its own dataclass said it
                    raise
                raise _with_fix(exc, name, f) from None
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError(f"missing required key {name!r}", where=at, hint=f"add `{name}:`")
    try:
        return cls(**kwargs)
    except UnknownValue as exc:
        err = SchemaError(str(exc), where=f"{where}.{exc.field}", known=exc.known)
        raise _with_fix(err, exc.field, fields.get(exc.field)) from None
    except ValueError as exc:
        raise EdgeQwenError(str(exc), where=where) from None


_EXAMPLE = {"true/false": "true", "a string": "text", "a list": "[...]", "a mapping": "{...}"}


def _with_fix(exc: SchemaError, name: str, f) -> SchemaError:
    """`exc` with what to write instead: a known value or the type expected, the field's default as the example."""
    default = f.default if f is not None and f.default is not dataclasses.MISSING else None
    default = default.value if isinstance(default, enum.Enum) else default
    if exc.known:
        example = default if isinstance(default, str) and default in exc.known else exc.known[0]
        hint = f"pick one of the known values, e.g. `{name}: {example}`"
    elif exc.expected:
        example = _EXAMPLE.get(exc.expected)  # no made-up number: `bits: 32` would mislead
        if default is not None and not isinstance(default, (list, tuple, dict)):
            example = str(default).lower() if isinstance(default, bool) else str(default)
        hint = f"{name} takes {exc.expected}" + (f", e.g. `{name}: {example}`" if example else "")
    else:
        return exc
    return SchemaError(exc.what, where=exc.where, hint=hint, expected=exc.expected, known=exc.known)


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


def load_file_schema(cls, data: dict, path: Path):
    """schema.from_dict for a recipe/target file, its errors saying where as `FILE: key`."""
    try:
        return from_dict(cls, data, where=str(path))
    except EdgeQwenError as exc:
        if not exc.where or not (exc.where == str(path) or exc.where.startswith(f"{path}.")):
            raise
        key = exc.where[len(str(path)):].lstrip(".")
        raise type(exc)(exc.what, where=file_key(path, key), hint=exc.hint) from None  # EdgeQwenError or SchemaError
