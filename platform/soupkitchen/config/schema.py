"""The machinery under every config section: a strict pydantic base model and readable errors.

:class:`Schema` is the base of every section (and of the reward scorers' ``Params``): unknown keys are
refused, types are strict (``"1"`` is not an int, ``true`` is not 1, an int is not a list; a float field
takes an int), NaN and ±inf are refused, and assignments are validated like construction
(``recipe.ppo.steps = 0`` raises). Every failure is a :class:`ConfigError` naming the dotted key path
(``rewards.0.params.target``) and what is allowed: the range, the choices of a literal or enum, or for an
unknown key the closest known one.

A section's own rules live in its validators and raise ``ConfigError(<key relative to the section>, ...)``;
the path of the section is put in front here, so the same rule reads ``eval.grid_step: ...`` in a recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import types
import typing
from typing import Any, Literal

import annotated_types as at
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from soupkitchen.errors import ConfigError


class Schema(BaseModel):
    """A config section: strict, closed (no unknown keys), validated on construction and assignment."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        validate_assignment=True,
        allow_inf_nan=False,
        validate_default=False,
    )

    def __init__(self, /, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise config_error(e, type(self)) from None

    def __setattr__(self, name: str, value: Any):
        if name not in type(self).model_fields:
            return super().__setattr__(name, value)
        old = self.__dict__[name]
        try:
            super().__setattr__(name, value)
        except ValidationError as e:
            self.__dict__[name] = old  # an after-validator sees the new value in place: put the old one back
            raise config_error(e, type(self)) from None


# --------------------------------------------------------------------------------------------- errors


def _unwrap(tp):
    """``tp`` without ``Annotated`` and without ``None`` in a two-member union (``int | None`` → int)."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _is_model(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _at(root, loc) -> tuple[Any, Any]:
    """The annotation and FieldInfo (None for list items / mapping values) at ``loc`` below model ``root``."""
    tp, info = root, None
    for key in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if _is_model(tp) and isinstance(key, str) and key in tp.model_fields:
            info = tp.model_fields[key]
            tp = info.annotation
        elif origin in (list, tuple) and isinstance(key, int):
            tp, info = typing.get_args(tp)[0], None
        elif origin is dict:
            tp, info = typing.get_args(tp)[1], None
        else:
            return None, None
    return _unwrap(tp), info


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _range_text(info) -> str | None:
    """``[1, inf)``, ``(0, 1]``... from a field's ``Field(ge=, gt=, le=, lt=)`` bounds; None without any."""
    lo = hi = None
    lo_open = hi_open = False
    for m in getattr(info, "metadata", ()):
        if isinstance(m, at.Ge):
            lo = m.ge
        elif isinstance(m, at.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, at.Le):
            hi = m.le
        elif isinstance(m, at.Lt):
            hi, hi_open = m.lt, True
    if lo is None and hi is None:
        return None
    left = "(-inf" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
    right = "inf)" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
    return f"{left}, {right}"


def _choices(tp, ctx) -> str:
    if typing.get_origin(tp) is Literal:
        return ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return ", ".join(repr(m.value) for m in tp)
    return (ctx or {}).get("expected", "?")


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "path_type": "a path",
}


def _message(err: dict, root) -> str:
    kind, loc, value = err["type"], err["loc"], err.get("input")
    if kind == "extra_forbidden":
        owner, _ = _at(root, loc[:-1])
        allowed = sorted(owner.model_fields) if _is_model(owner) else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key; {hint}allowed keys here: {', '.join(allowed)}"
    tp, info = _at(root, loc)
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {value!r}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list ({_type_name(tp)}), got {value!r}"
    if kind in ("model_type", "model_attributes_type", "dataclass_type"):
        return f"expected a mapping for {getattr(tp, '__name__', 'this section')}, got {value!r}"
    if kind in ("literal_error", "enum"):
        return f"must be one of {_choices(tp, err.get('ctx'))}; got {value!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"):
        bounds = _range_text(info)
        return f"must lie in {bounds}, got {value!r}" if bounds else f"must be a finite number, got {value!r}"
    if kind == "missing":
        return "is required (no default)"
    return err["msg"]


def _join(*parts) -> str:
    return ".".join(str(p) for p in parts if p != "")


def config_error(e: ValidationError, root: type, path: str = "") -> ConfigError:
    """The first problem of a pydantic ValidationError raised validating ``root``, as a ConfigError whose
    path is ``path`` + the error's location. Unknown keys come first (a typo is the likeliest cause)."""
    errors = e.errors(include_url=False)
    err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):  # a section's own rule: its path is relative to the section
        return ConfigError(_join(path, *err["loc"], cause.path), cause.msg)
    if err["type"] == "value_error" and cause is not None:
        return ConfigError(_join(path, *err["loc"]), str(cause))
    return ConfigError(_join(path, *err["loc"]), _message(err, root))


# --------------------------------------------------------------------------------------------- dict I/O


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False):
    """Field metadata of a plain dataclass: value must lie in [lo, hi] (open ends where requested)."""
    return {"range": (lo, hi, lo_open, hi_open)}


def _num(default, lo=None, hi=None, **kw):
    """A ranged field of a plain ``@dataclass`` checked by :func:`from_dict` (``serving.ServeOptions``);
    :class:`Schema` sections use ``Field(ge=..., gt=..., le=..., lt=...)`` instead."""
    return dataclasses.field(default=default, metadata=_range(lo, hi, **kw))


@functools.cache
def _dataclass_schema(cls) -> type[Schema]:
    """A :class:`Schema` mirroring plain dataclass ``cls`` (types, defaults, ``_num`` ranges)."""
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        lo, hi, lo_open, hi_open = f.metadata.get("range", (None, None, False, False))
        kw: dict[str, Any] = {}
        if lo is not None:
            kw["gt" if lo_open else "ge"] = lo
        if hi is not None:
            kw["lt" if hi_open else "le"] = hi
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kw["default_factory"] = f.default_factory
        fields[f.name] = (hints[f.name], Field(**kw))
    return create_model(cls.__name__, __base__=Schema, __module__=cls.__module__, **fields)


def from_dict(cls, data, path: str = ""):
    """Build ``cls`` (a :class:`Schema`, or a plain dataclass) from a mapping; a ConfigError at
    ``path``.<key> for unknown keys, wrong types, out-of-range values and broken section rules."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a mapping for {cls.__name__}, got {data!r}")
    model = cls if _is_model(cls) else _dataclass_schema(cls)
    try:
        obj = model.model_validate(data)
    except ValidationError as e:
        raise config_error(e, model, path) from None
    return obj if model is cls else cls(**{k: getattr(obj, k) for k in data})


def to_dict(obj) -> dict:
    """A JSON-able dict of a section or recipe (enums as their string values), or of a plain dataclass."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"to_dict needs a config section or a dataclass, got {type(obj).__name__}")


def replace(obj, /, **changes):
    """A validated copy of ``obj`` with ``changes`` (``dataclasses.replace`` for config sections)."""
    if isinstance(obj, BaseModel):
        fields = {k: getattr(obj, k) for k in type(obj).model_fields}
        return type(obj)(**{**fields, **changes})
    return dataclasses.replace(obj, **changes)
