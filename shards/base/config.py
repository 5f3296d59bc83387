"""One mechanism for every stage's config: dataclass <- TOML section <- CLI overrides.

Resolution order is CLI > TOML file > dataclass defaults. Each stage owns one
``@dataclass(kw_only=True)`` and receives only its own section, so an unknown key is
a typo we can name (file, section and key) instead of a silently ignored setting.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import tomllib
import types
import typing
import warnings
from collections.abc import Callable
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


NONE_WORDS = ("none", "null")
"""Spellings of "no value" (TOML has no null): an optional field given one of them is None."""


def parse_value(text: str) -> Any:
    """Parse a CLI override value as a TOML literal (``3``, ``1e-3``, ``true``, ``[1, 2]``,
    ``"x"``); ``none``/``null`` is None; anything else that is not a literal stays a plain
    string (``resnet50``)."""
    if text.strip().lower() in NONE_WORDS:
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _allows_none(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _none_word(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS)


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
    if value is None and not _allows_none(hint):
        # ``none`` given to a field whose own vocabulary spells it out (amp = "none",
        # normalize = "none", resume = "none") is that word, not a missing value
        if hint is str or (origin is typing.Literal and "none" in args):
            return "none"
        raise ValueError(f"{where}: none is not allowed here (expected {_describe(hint)})")
    if origin in (typing.Union, types.UnionType):
        if _none_word(value) and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except (TypeError, ValueError):
                continue
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
        if isinstance(value, hint):  # already built (e.g. an importer's options)
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a table, got {value!r}")
        return from_dict(hint, value, where)
    if hint in _SCALARS:
        accepts, convert, what = _SCALARS[hint]
        if accepts(value):
            return convert(value)
        raise ValueError(f"{where}: expected {what}, got {value!r}")
    return value


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_SCALARS: dict[Any, tuple[Callable[[Any], bool], Callable[[Any], Any], str]] = {
    bool: (lambda v: isinstance(v, bool), bool, "true/false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), int, "an integer"),
    float: (_number, float, "a number"),
    str: (lambda v: isinstance(v, str), str, "a string"),
    Path: (lambda v: isinstance(v, (str, Path)), Path, "a path"),
}
"""A scalar field's type -> (accepted TOML values, conversion, what the error says was expected)."""


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "", *, strict: bool = True) -> T:
    """Build dataclass ``cls`` from a TOML table: unknown keys and wrong types are errors
    that name ``where`` (e.g. ``configs/x.toml [model]``) and the key.

    ``strict=False`` is for configs stored in checkpoints, which must outlive config
    changes: an unknown (removed or renamed) key is dropped with a warning; a missing one
    takes its default as always."""
    data = dict(data or {})
    where = where or cls.__name__
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown and strict:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    if unknown:
        warnings.warn(f"{where}: ignoring unknown key(s) {unknown} (stored by another version)", stacklevel=2)
        data = {k: v for k, v in data.items() if k in fields}
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
    values: dict[str, dict[str, Any]] | None = None,
    defaults: Callable[[dict[str, Any]], dict[str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Load several stage configs from one TOML file plus CLI overrides (the one loader).

    ``sections`` maps a TOML table name to its dataclass. A table in the file that no
    stage owns is an error (unless ``allow_other``: a CLI that reads a few sections of an
    experiment file), so a misspelt ``[modle]`` is caught. ``values`` are a CLI's own
    flags, already parsed (``{"eval": {"split": "test"}}``): they win over the overrides.
    ``defaults(tree)`` gives tables that sit under the file and the overrides: values that
    come from the data (an image build's channels), used only where the config says nothing.
    """
    label = str(path) if path else "config"
    tree = load_toml(path) if path else {}
    tree = apply_overrides(tree, overrides or [])
    for name, table in (values or {}).items():
        tree[name] = {**section_table(tree, name, label), **table}
    for name, table in (defaults(tree) if defaults else {}).items():
        tree[name] = {**table, **section_table(tree, name, label)}
    return sections_from_tree(sections, tree, label, allow_other=allow_other)


def sections_from_tree(
    sections: dict[str, type],
    tree: dict[str, Any],
    label: str,
    *,
    allow_other: bool = False,
    strict: bool = True,
) -> dict[str, Any]:
    """Each section's dataclass from nested plain data (a TOML tree or a checkpoint's
    stored config). ``strict=False`` (stored configs): unknown sections and keys warn
    and are dropped, missing ones take their defaults."""
    extra = sorted(set(tree) - set(sections))
    if extra and strict and not allow_other:
        raise ValueError(f"{label}: unknown section(s) {extra}; known: {sorted(sections)}")
    if extra and not strict:
        warnings.warn(
            f"{label}: ignoring unknown section(s) {extra} (stored by another version)", stacklevel=2
        )
    return {
        name: from_dict(cls, section_table(tree, name, label), f"{label} [{name}]", strict=strict)
        for name, cls in sections.items()
    }


def section_table(tree: dict[str, Any], name: str, label: str) -> dict[str, Any]:
    """``tree[name]`` (empty when absent); a value where a table belongs is an error."""
    table = tree.get(name, {})
    if not isinstance(table, dict):
        raise ValueError(f"{label}: [{name}] must be a table")
    return table


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring line (the string under it: docs/architecture.md, Conventions), for generated CLI help."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            body = ast.parse(inspect.getsource(klass)).body[0]
        except (OSError, TypeError, SyntaxError):  # no source (built at runtime): no help text
            continue
        assert isinstance(body, ast.ClassDef)
        for stmt, nxt in zip(body.body, body.body[1:]):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                    docs[stmt.target.id] = " ".join(str(nxt.value.value).split())
    return docs
