"""A small typed schema for TOML tables: dataclass sections whose fields are checked and converted.

A :class:`Section` is a ``@dataclass(kw_only=True)`` whose fields may carry bounds, other accepted
keys and a check (:func:`rule`). ``Section.load(mapping)`` reads a table: unknown keys are
errors, values are converted the lenient way TOML files and environment variables need (``"5"``
is an int, ``"false"`` a bool, ``8.0`` an int, an int a float) and checked against their type and
bounds. Building a section directly (``ForwardSettings(api_key="...")``) checks and converts the
same way. Every problem is a :class:`SchemaError`: the path of keys to the value and one message,
worded like pydantic's (the schema's earlier implementation), so messages users know stay.

It replaces pydantic on the command line's read path, where importing pydantic and building its
models cost more than the commands' own work.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, Self

Loc = tuple[str | int, ...]

_INT_TEXT = re.compile(r"[+-]?\d+(?:\.0*)?")
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


class SchemaError(ValueError):
    """A value that does not fit the schema: where it is (keys and list indexes) and what is wrong."""

    def __init__(self, loc: Loc, message: str):
        self.loc = loc
        self.message = message
        super().__init__(f"{self.where}: {message}")

    @property
    def where(self) -> str:
        return ".".join(str(part) for part in self.loc) or "(top level)"

    def under(self, *prefix: str | int) -> SchemaError:
        """The same problem seen from an enclosing table."""
        return SchemaError((*prefix, *self.loc), self.message)


class SecretStr:
    """A string kept out of ``repr``, ``str`` and logs; :meth:`get_secret_value` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"SecretStr({str(self)!r})"

    def __str__(self) -> str:
        return "**********" if self._value else ""

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def rule(
    default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | Any = dataclasses.MISSING,
    ge: float | None = None, gt: float | None = None, le: float | None = None,
    aliases: tuple[str, ...] = (), check: Callable[[Any], Any] | None = None,
) -> Any:
    """A field with bounds (``ge``, ``gt``, ``le``), other keys it may be given under (``aliases``,
    after its own name) and a ``check`` run on the converted value (a ValueError is its message)."""
    metadata = {"ge": ge, "gt": gt, "le": le, "aliases": aliases, "check": check}
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    type: Any
    keys: tuple[str, ...]
    ge: float | None
    gt: float | None
    le: float | None
    check: Callable[[Any], Any] | None


class Section:
    """Base of a schema table (subclasses are ``@dataclass(kw_only=True)``)."""

    _plans: ClassVar[dict[type, tuple[_Field, ...]]] = {}

    def __post_init__(self) -> None:
        for spec in _plan(type(self)):
            value = _convert(spec.type, getattr(self, spec.name), (spec.name,))
            value = _bounded(spec, value)
            if spec.check is not None:
                try:
                    value = spec.check(value)
                except ValueError as e:
                    raise SchemaError((spec.name,), str(e)) from None
            object.__setattr__(self, spec.name, value)
        try:
            self.validate()
        except SchemaError:
            raise
        except ValueError as e:
            raise SchemaError((), str(e)) from None

    def validate(self) -> None:
        """Checks of the whole table, after its fields (raise ValueError)."""

    @classmethod
    def load(cls, data: Any) -> Self:
        """The section of a table (a mapping); unknown keys are errors."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise SchemaError((), f"Input should be a valid dictionary or instance of {cls.__name__}")
        values: dict[str, Any] = {}
        used: dict[str, str] = {}
        for spec in _plan(cls):
            for key in spec.keys:
                if key in data:
                    values[spec.name] = data[key]
                    used[spec.name] = key
                    break
        extra = next((key for key in data if key not in used.values()), None)
        try:
            section = cls(**values)
        except SchemaError as e:
            if e.loc and e.loc[0] in used:
                raise SchemaError((used[str(e.loc[0])], *e.loc[1:]), e.message) from None
            if e.loc or extra is None:
                raise
            # The table's own checks (loc ()) come after its keys: an unknown key is named first.
        if extra is not None:
            raise SchemaError((extra,), "Extra inputs are not permitted")
        return section


def _plan(cls: type) -> tuple[_Field, ...]:
    """The fields of a section with their resolved types (worked out once per class)."""
    plan = Section._plans.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        plan = tuple(
            _Field(f.name, hints[f.name], (f.name, *f.metadata.get("aliases", ())), f.metadata.get("ge"),
                   f.metadata.get("gt"), f.metadata.get("le"), f.metadata.get("check"))
            for f in dataclasses.fields(cls)
        )
        Section._plans[cls] = plan
    return plan


def _bounded(spec: _Field, value: Any) -> Any:
    if value is None:
        return value
    if spec.le is not None and not value <= spec.le:
        raise SchemaError((spec.name,), f"Input should be less than or equal to {spec.le}")
    if spec.ge is not None and not value >= spec.ge:
        raise SchemaError((spec.name,), f"Input should be greater than or equal to {spec.ge}")
    if spec.gt is not None and not value > spec.gt:
        raise SchemaError((spec.name,), f"Input should be greater than {spec.gt}")
    return value


def _convert(kind: Any, value: Any, loc: Loc) -> Any:
    """``value`` as a ``kind`` (a type hint), or a :class:`SchemaError` at ``loc``."""
    origin = typing.get_origin(kind)
    if origin is types.UnionType or origin is typing.Union:
        args = typing.get_args(kind)
        if value is None and type(None) in args:
            return None
        (kind,) = [arg for arg in args if arg is not type(None)]
        return _convert(kind, value, loc)
    if origin is Literal:
        choices = typing.get_args(kind)
        if value in choices and type(value) is str:
            return value
        *first, last = (repr(choice) for choice in choices)
        raise SchemaError(loc, f"Input should be {', '.join(first)} or {last}" if first else f"Input should be {last}")
    if origin is dict:
        if not isinstance(value, Mapping):
            raise SchemaError(loc, "Input should be a valid dictionary")
        key_kind, value_kind = typing.get_args(kind)
        return {_convert(key_kind, k, (*loc, k)): _convert(value_kind, v, (*loc, k)) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list | tuple | set | frozenset):
            raise SchemaError(loc, "Input should be a valid list")
        (item_kind,) = typing.get_args(kind)
        return [_convert(item_kind, item, (*loc, i)) for i, item in enumerate(value)]
    if isinstance(kind, type) and issubclass(kind, Section):
        try:
            return kind.load(value)
        except SchemaError as e:
            raise e.under(*loc) from None
    converter = _SCALARS.get(kind)
    if converter is None:
        raise TypeError(f"no conversion to {kind!r}")
    return converter(value, loc)


def _to_str(value: Any, loc: Loc) -> str:
    if isinstance(value, str):
        return value
    raise SchemaError(loc, "Input should be a valid string")


def _to_secret(value: Any, loc: Loc) -> SecretStr:
    return value if isinstance(value, SecretStr) else SecretStr(_to_str(value, loc))


def _to_int(value: Any, loc: Loc) -> int:
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise SchemaError(loc, "Input should be a finite number")
        raise SchemaError(loc, "Input should be a valid integer, got a number with a fractional part")
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.fullmatch(text):
            return int(text.split(".")[0])
        raise SchemaError(loc, "Input should be a valid integer, unable to parse string as an integer")
    raise SchemaError(loc, "Input should be a valid integer")


def _to_float(value: Any, loc: Loc) -> float:
    if isinstance(value, int | float) and not isinstance(value, complex):
        try:
            return float(value)
        except OverflowError:
            raise SchemaError(loc, "Input should be a valid number") from None
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise SchemaError(loc, "Input should be a valid number, unable to parse string as a number") from None
    raise SchemaError(loc, "Input should be a valid number")


def _to_bool(value: Any, loc: Loc) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    if isinstance(value, str) or (isinstance(value, int) and abs(value) < 2**63) or (
        isinstance(value, float) and value.is_integer()
    ):
        raise SchemaError(loc, "Input should be a valid boolean, unable to interpret input")
    raise SchemaError(loc, "Input should be a valid boolean")


_SCALARS: dict[Any, Callable[[Any, Loc], Any]] = {
    str: _to_str, SecretStr: _to_secret, int: _to_int, float: _to_float, bool: _to_bool,
}
