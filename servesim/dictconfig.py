"""Building frozen config dataclasses (run config, workload, sweep) from YAML mappings, checking keys and types.

Each config class subclasses `DictConfig` and gets `from_dict(d, where)`: an unknown key or a
value of the wrong type is an `InputError` naming `where` and the key; value checks live in the
class's `__post_init__`, which raises `InputError("key: ...")` and gets `where` prefixed here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

import numpy as np

from servesim.errors import InputError

T = TypeVar("T", bound="DictConfig")


class DictConfig:
    """Mixin for frozen dataclasses that the config loader builds from a YAML mapping."""

    @classmethod
    def from_dict(cls: type[T], d: object, where: str) -> T:
        """Build from a mapping; `where` (e.g. "run.yaml: workload") prefixes every error."""
        if not isinstance(d, Mapping):
            raise InputError(f"{where}: expected a mapping, got {show(d)}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key not in names:
                raise InputError(
                    f"{where}: unknown key '{key}' (known: {', '.join(names)})")
            kwargs[key] = coerce(value, hints[key], f"{where}.{key}")
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if f.init and required and f.name not in kwargs:
                raise InputError(f"{where}: missing key '{f.name}'")
        try:
            return cls(**kwargs)
        except InputError as e:
            raise InputError(f"{where}.{e}") from None


def coerce(value: object, tp: Any, key: str) -> Any:
    """`value` checked against the annotation `tp`; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        if len(options) == 1:  # Optional[X]: X's own, more precise, message
            return coerce(value, options[0], key)
        for arg in options:
            try:
                return coerce(value, arg, key)
            except InputError:
                continue
        raise InputError(f"{key}: expected {_type_name(tp)}, got {show(value)}")
    if isinstance(tp, type) and issubclass(tp, DictConfig):
        return tp.from_dict(value, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise InputError(f"{key}: expected a list, got {show(value)}")
        item_type = typing.get_args(tp)[0]
        return tuple(coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise InputError(f"{key}: expected one of {_type_name(tp)}, got {show(value)}")
        return value
    if _matches(value, origin or tp):
        return float(value) if tp is float else value  # type: ignore[arg-type]
    raise InputError(f"{key}: expected {_type_name(tp)}, got {show(value)}")


def _matches(value: object, tp: Any) -> bool:
    if tp is type(None):
        return value is None
    if tp in (int, float) and isinstance(value, bool):
        return False
    if tp is float:
        return isinstance(value, int | float)
    if tp in (dict, Mapping):
        return isinstance(value, Mapping)
    return isinstance(tp, type) and isinstance(value, tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "/".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list"
    if tp is type(None):
        return "null"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def show(value: object) -> str:
    """A value for a message: repr, numpy scalars as plain Python, long text shortened."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 60 else text[:57] + "..."
