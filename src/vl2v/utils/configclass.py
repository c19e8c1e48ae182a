"""The mechanism of the one configuration layer (:mod:`vl2v.config`): :func:`config_dataclass` (a dataclass
that pydantic validates on construction), :func:`validated` (construction from options with one readable
:class:`~vl2v.errors.ConfigError`) and the common field types.

:mod:`vl2v.config` re-exports all of it and is where the rest of the package imports it from; it lives here,
at the bottom of the layers, so that ``data/`` (which ``config.py`` imports) can declare its options with it
too (``data.transforms.AugConfig``).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, TypeVar

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass

from vl2v.errors import ConfigError

T = TypeVar("T")

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0.0)]
PosFloat = Annotated[float, Field(gt=0.0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


def config_dataclass(cls: type[T] | None = None, *, frozen: bool = False):
    """``@dataclass`` whose fields pydantic validates on construction (unknown fields refused)."""

    def wrap(c: type[T]) -> type[T]:
        return _pydantic_dataclass(c, frozen=frozen, config=ConfigDict(extra="forbid", arbitrary_types_allowed=True))

    return wrap(cls) if cls is not None else wrap


def _describe(err: dict[str, Any], what: str, known: list[str], noun: str, labels: dict[str, str] | None = None) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__init__") or "value"
    loc = (labels or {}).get(loc, loc)
    typ, given = err.get("type", ""), err.get("input")
    ctx = err.get("ctx") or {}
    if typ in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"{what} has no {noun} {loc!r}; known: {', '.join(known)}"
    if typ.endswith("_parsing") or typ.endswith("_type"):
        kind = typ.split("_")[0]
        return f"{what}: {loc}={given!r}: expected {kind}"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if typ in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"{what}: {loc} must be {bounds[typ]} {limit}, got {given!r}"
    return f"{what}: {loc}: {err.get('msg', typ)} (got {given!r})"


def validated(cls: type[T], data: dict[str, Any], what: str | None = None, noun: str = "option",
              labels: dict[str, str] | None = None) -> T:
    """``cls(**data)`` with pydantic's errors turned into one readable :class:`ConfigError`; ``labels`` name a
    field as the user wrote it (``{"lr": "--lr"}``: "--lr must be >= 0" rather than "lr must be >= 0")."""
    what = what or cls.__name__
    try:
        return TypeAdapter(cls).validate_python(dict(data))
    except ValidationError as exc:
        known = [f.name for f in dataclasses.fields(cls)]
        raise ConfigError("; ".join(_describe(e, what, known, noun, labels) for e in exc.errors())) from None


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Inverse of ``dataclasses.asdict`` for these config classes (as stored in JSON files)."""
    return validated(cls, data)


__all__ = ["Fraction", "NonNegFloat", "NonNegInt", "PosFloat", "PosInt", "config_dataclass", "from_dict", "validated"]
