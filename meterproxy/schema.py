"""A small typed schema for TOML tables: dataclass sections whose fields are checked and converted.

A :class:`Section` is a ``@dataclass(kw_only=True, repr=False, eq=False)`` whose fields may carry
bounds, other accepted keys and a check (:func:`rule`). ``Section.load(mapping)`` reads a table: unknown keys are
errors, values are converted the lenient way TOML files and environment variables need (``"5"``
is an int, ``"false"`` a bool, ``8.0`` an int, an int a float) and checked against their type and
bounds. Building a section directly (``ForwardSettings(api_key="...")``) checks and converts the
same way. The problems (all of them, in the order of the fields, unknown keys last) are a
:class:`SchemaError`: each the path of keys to the value and one message, worded like pydantic's
(the schema's earlier implementation), so the messages users know stay.

It replaces pydantic on the command line's read path, where importing pydantic and building its
models cost more than the commands' own work.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar, Literal, Self

Loc = tuple[str | int, ...]

_INT_TEXT = re.compile(r"[+-]?\d+(?:\.0*)?")
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


class SchemaError(ValueError):
    """Values that do not fit the schema: each problem is where it is (keys and list indexes) and
    what is wrong; ``loc``, ``message`` and the text are the first problem's."""

    def __init__(self, loc: Loc, message: str, *more: tuple[Loc, str]):
        self.problems: list[tuple[Loc, str]] = [(loc, message), *more]
        self.loc = loc
        self.message = message
        super().__init__(f"{where(loc)}: {message}")

    @classmethod
    def of(cls, problems: list[tuple[Loc, str]]) -> SchemaError:
        return cls(*problems[0], *problems[1:])

    def under(self, *prefix: str | int) -> SchemaError:
        """The same problems seen from an enclosing table."""
        return SchemaError.of([((*prefix, *loc), message) for loc, message in self.problems])


def where(loc: Loc) -> str:
    """A problem's place as dotted keys."""
    return ".".join(str(part) for part in loc) or "(top level)"


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


class Bounds:
    """Constraints on a converted value, checked in this order; also usable as ``Annotated[T, Bounds(...)]``.

    (A plain class, as :class:`_Field`: a dataclass costs the command line's start more.)"""

    __slots__ = ("finite", "le", "ge", "gt", "min_length", "pattern")

    def __init__(self, finite: bool = False, le: Any = None, ge: Any = None, gt: Any = None,
                 min_length: int | None = None, pattern: str | None = None):
        self.finite, self.le, self.ge, self.gt = finite, le, ge, gt
        self.min_length, self.pattern = min_length, pattern

    def check(self, value: Any, loc: Loc) -> Any:
        if value is None:
            return value
        if self.finite and not (value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)):
            raise SchemaError(loc, "Input should be a finite number")
        if self.le is not None and not value <= self.le:
            raise SchemaError(loc, f"Input should be less than or equal to {self.le}")
        if self.ge is not None and not value >= self.ge:
            raise SchemaError(loc, f"Input should be greater than or equal to {self.ge}")
        if self.gt is not None and not value > self.gt:
            raise SchemaError(loc, f"Input should be greater than {self.gt}")
        if self.min_length is not None and len(value) < self.min_length:
            n = self.min_length
            if isinstance(value, str):
                raise SchemaError(loc, f"String should have at least {n} character{'s' * (n != 1)}")
            items = f"{n} item{'s' * (n != 1)}"
            raise SchemaError(loc, f"List should have at least {items} after validation, not {len(value)}")
        if self.pattern is not None and not re.search(self.pattern, value):
            raise SchemaError(loc, f"String should match pattern '{self.pattern}'")
        return value


def rule(
    default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | Any = dataclasses.MISSING,
    aliases: tuple[str, ...] = (), check: Callable[[Any], Any] | None = None, **bounds: Any,
) -> Any:
    """A field with :class:`Bounds` (``ge=0``...), other keys it may be given under (``aliases``,
    after its own name) and a ``check`` run on the converted value (a ValueError is its message)."""
    metadata = {"bounds": Bounds(**bounds) if bounds else None, "aliases": aliases, "check": check}
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


_REQUIRED: Any = object()
"""What :meth:`Section.load` passes for a required key the table lacks."""


class _Field(typing.NamedTuple):
    name: str
    convert: Converter
    keys: tuple[str, ...]
    bounds: Bounds | None
    check: Callable[[Any], Any] | None
    required: bool


class Section:
    """Base of a schema table (subclasses are ``@dataclass(kw_only=True, repr=False, eq=False)``: the
    ``repr`` and ``==`` here are the same as dataclasses', without generating code for each class,
    which costs a start-up of the command line)."""

    _plans: ClassVar[dict[type, tuple[_Field, ...]]] = {}

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))  # type: ignore[arg-type]
        return f"{type(self).__qualname__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(self))  # type: ignore[arg-type]

    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        problems: list[tuple[Loc, str]] = []
        for spec in _plan(type(self)):
            value = getattr(self, spec.name)
            if value is _REQUIRED:
                problems.append(((spec.name,), "Field required"))
                continue
            try:
                value = spec.convert(value, (spec.name,))
                if spec.bounds is not None:
                    value = spec.bounds.check(value, (spec.name,))
                if spec.check is not None:
                    try:
                        value = spec.check(value)
                    except SchemaError:
                        raise
                    except ValueError as e:
                        raise SchemaError((spec.name,), str(e)) from None
            except SchemaError as e:
                problems += e.problems
                continue
            object.__setattr__(self, spec.name, value)
        if problems:
            raise SchemaError.of(problems)
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
            else:
                if spec.required:
                    values[spec.name] = _REQUIRED
        extras: list[tuple[Loc, str]] = [((key,), "Extra inputs are not permitted")
                                         for key in data if key not in used.values()]
        try:
            section = cls(**values)
        except SchemaError as e:
            if all(not loc for loc, _ in e.problems) and extras:  # the table's own checks come after its keys
                raise SchemaError.of(extras) from None
            raise SchemaError.of([
                ((used.get(str(loc[0]), loc[0]), *loc[1:]) if loc else loc, message) for loc, message in e.problems
            ] + extras) from None
        if extras:
            raise SchemaError.of(extras)
        return section

    def dump(self) -> dict[str, Any]:
        """The fields that are set: neither None nor their default (nested sections alike)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if value is not None and value != default:
                out[f.name] = _dumped(value)
        return out


_evaluated: dict[tuple[str, str], Any] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The type hints of a class's fields, Annotated kept (``typing.get_type_hints`` without its
    checks, which cost the command line a few milliseconds at start-up); each text evaluated once."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        namespace = vars(sys.modules[klass.__module__])
        for name, hint in klass.__dict__.get("__annotations__", {}).items():
            if isinstance(hint, str):
                key = (klass.__module__, hint)
                if key not in _evaluated:
                    _evaluated[key] = eval(hint, namespace)  # noqa: S307 -- our own annotations
                hint = _evaluated[key]
            hints[name] = hint
    return hints


def _dumped(value: Any) -> Any:
    if isinstance(value, Section):
        return value.dump()
    if isinstance(value, dict):
        return {k: _dumped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dumped(v) for v in value]
    return value


def _plan(cls: type) -> tuple[_Field, ...]:
    """The fields of a section with their resolved types (worked out once per class)."""
    plan = Section._plans.get(cls)
    if plan is None:
        hints = _hints(cls)
        plan = tuple(
            _Field(f.name, _converter(hints[f.name]), (f.name, *f.metadata.get("aliases", ())),
                   f.metadata.get("bounds"), f.metadata.get("check"),
                   f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)
        )
        Section._plans[cls] = plan
    return plan


Converter = Callable[[Any, Loc], Any]
_converters: dict[Any, Converter] = {}


def _convert(kind: Any, value: Any, loc: Loc) -> Any:
    """``value`` as a ``kind`` (a type hint), or a :class:`SchemaError` at ``loc``."""
    return _converter(kind)(value, loc)


def _converter(kind: Any) -> Converter:
    """The conversion to ``kind``, worked out once per type hint."""
    converter = _converters.get(kind)
    if converter is None:
        converter = _converters[kind] = _build(kind)
    return converter


def _build(kind: Any) -> Converter:
    origin = typing.get_origin(kind)
    if origin is Annotated:
        inner, checks = _converter(kind.__origin__), [bounds.check for bounds in kind.__metadata__]

        def annotated(value: Any, loc: Loc) -> Any:
            value = inner(value, loc)
            for check in checks:
                value = check(value, loc)
            return value

        return annotated
    if origin is types.UnionType or origin is typing.Union:
        args = tuple(arg for arg in typing.get_args(kind) if arg is not type(None))
        some = _to_date_or_datetime if args == (date, datetime) else _converter(args[0])
        if len(args) == len(typing.get_args(kind)):
            return some
        return lambda value, loc: None if value is None else some(value, loc)
    if origin is Literal:
        choices = typing.get_args(kind)
        *first, last = (repr(choice) for choice in choices)
        message = f"Input should be {', '.join(first)} or {last}" if first else f"Input should be {last}"

        def literal(value: Any, loc: Loc) -> Any:
            if type(value) is str and value in choices:
                return value
            raise SchemaError(loc, message)

        return literal
    if origin is dict:
        key_of, value_of = (_converter(arg) for arg in typing.get_args(kind))

        def mapping(value: Any, loc: Loc) -> dict[Any, Any]:
            if not isinstance(value, Mapping):
                raise SchemaError(loc, "Input should be a valid dictionary")
            return _each(dict(value), lambda k, v: (key_of(k, (*loc, k)), value_of(v, (*loc, k))))

        return mapping
    if origin is list:
        item_of = _converter(typing.get_args(kind)[0])

        def sequence(value: Any, loc: Loc) -> list[Any]:
            if not isinstance(value, list | tuple | set | frozenset):
                raise SchemaError(loc, "Input should be a valid list")
            return list(_each(dict(enumerate(value)), lambda i, v: (i, item_of(v, (*loc, i)))).values())

        return sequence
    if isinstance(kind, type) and issubclass(kind, Section):
        def section(value: Any, loc: Loc) -> Section:
            try:
                return kind.load(value)
            except SchemaError as e:
                raise e.under(*loc) from None

        return section
    if kind not in _SCALARS:
        raise TypeError(f"no conversion to {kind!r}")
    return _SCALARS[kind]


def _each(items: dict[Any, Any], convert: Callable[[Any, Any], tuple[Any, Any]]) -> dict[Any, Any]:
    """Every item converted; the problems of all of them, not only of the first bad one."""
    out: dict[Any, Any] = {}
    problems: list[tuple[Loc, str]] = []
    for key, value in items.items():
        try:
            new_key, new_value = convert(key, value)
        except SchemaError as e:
            problems += e.problems
            continue
        out[new_key] = new_value
    if problems:
        raise SchemaError.of(problems)
    return out


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


def _to_decimal(value: Any, loc: Loc) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SchemaError(loc, "Decimal input should be an integer, float, string or Decimal object")
    try:
        return Decimal(value if isinstance(value, int) else str(value).strip())
    except InvalidOperation:
        raise SchemaError(loc, "Input should be a valid decimal") from None


def _to_date_or_datetime(value: Any, loc: Loc) -> date | datetime:
    """A date (also a date-time at midnight without zone, as text) or a date-time (an int: Unix seconds)."""
    if isinstance(value, date):
        return value
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, ValueError, OSError):
            pass
        else:
            return moment.date() if moment.time() == time() else moment
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return moment.date() if moment.time() == time() and moment.tzinfo is None else moment
    raise SchemaError(loc, "Input should be a valid date or datetime")


_SCALARS: dict[Any, Callable[[Any, Loc], Any]] = {
    str: _to_str, SecretStr: _to_secret, int: _to_int, float: _to_float, bool: _to_bool, Decimal: _to_decimal,
}
