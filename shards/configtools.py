"""One mechanism for every stage's config: dataclass <- TOML section <- CLI overrides.

Resolution order is CLI > TOML file > dataclass defaults. Each stage owns one
``@dataclass(kw_only=True)`` and receives only its own section, so an unknown key is
a typo we can name (file, section and key) instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file is one clear error naming it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config file not found")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{p}: not valid TOML: {e}") from None


def parse_value(text: str) -> Any:
    """Parse a CLI override value as a TOML literal (``3``, ``1e-3``, ``true``, ``[1, 2]``,
    ``"x"``); anything that is not a literal stays a plain string (``resnet50``)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` (or ``--section.key=value``) overrides to a nested dict.

    Returns a new dict; ``tree`` is not modified.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ValueError(f"override {item!r}: expected section.key=value")
        dotted, raw = text.split("=", 1)
        parts = dotted.split(".")
        if any(not p for p in parts):
            raise ValueError(f"override {item!r}: empty name in {dotted!r}")
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {p!r} is a value, not a section")
            else:
                child = node[p] = dict(child)
            node = child
        node[parts[-1]] = parse_value(raw)
    return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise ValueError(f"{where}: {value!r} does not fit {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a table, got {value!r}")
        return from_dict(hint, value, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: expected a string, got {value!r}")
    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ValueError(f"{where}: expected a path, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a TOML table: unknown keys and wrong types are errors
    that name ``where`` (e.g. ``configs/x.toml [model]``) and the key."""
    data = dict(data or {})
    where = where or cls.__name__
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    kwargs = {k: _coerce(v, hints[k], f"{where} {k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict of TOML/JSON-able values (Paths become strings)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(obj)


def load_sections(
    sections: dict[str, type],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    allow_other: bool = False,
) -> dict[str, Any]:
    """Load several stage configs from one TOML file plus CLI overrides.

    ``sections`` maps a TOML table name to its dataclass. A table in the file that no
    stage owns is an error (unless ``allow_other``), so a misspelt ``[modle]`` is caught.
    """
    tree = load_toml(path) if path else {}
    tree = apply_overrides(tree, overrides or [])
    label = str(path) if path else "config"
    if not allow_other:
        extra = sorted(set(tree) - set(sections))
        if extra:
            raise ValueError(f"{label}: unknown section(s) {extra}; known: {sorted(sections)}")
    out: dict[str, Any] = {}
    for name, cls in sections.items():
        table = tree.get(name, {})
        if not isinstance(table, dict):
            raise ValueError(f"{label}: [{name}] must be a table")
        out[name] = from_dict(cls, table, f"{label} [{name}]")
    return out
