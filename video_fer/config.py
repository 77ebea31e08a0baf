"""Recipe configuration: a YAML file plus ``key.sub=value`` command-line overrides.

A config is a tree of dataclasses (the *schema*: every valid key and its default).
:func:`load_config` starts from the schema's defaults, merges the YAML file over them,
then the command-line overrides, and builds the dataclasses. Values given on the
command line are parsed with ``yaml.safe_load``, so ``optim.lr=3e-4`` is a float,
``data.cache=null`` is ``None`` and ``data.gap=[1,30]`` a list.

Any key the schema does not know (in the file or on the command line) is a
:class:`~video_fer.errors.ConfigError` that names the key and lists the valid ones.

A field typed ``dict`` may carry ``metadata={"schema": SomeDataclass}``: its valid keys
and defaults then come from that dataclass (e.g. a recipe's model section takes the fields
of :class:`video_fer.models.tae.TAEConfig`); ``metadata={"free_keys": True}`` accepts any
key. Each recipe keeps its schema at its top (``recipes/*.py``); shared sections such as
:class:`video_fer.train.sections.OptimConfig` live in the package.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from video_fer.errors import ConfigError

_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", 0.0003)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected key.sub=value (e.g. optim.lr=3e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({error}); quote strings") from error
    # YAML 1.1 reads yes/no/on/off as booleans; only true/false mean a boolean here (mixed_precision=no).
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw.strip()
    # yaml.safe_load reads "3e-4" as a string (YAML 1.1 wants a dot in floats); a number is meant.
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        value = float(value)
    return key, value


def defaults_tree(schema) -> dict[str, Any]:
    """The defaults of a dataclass schema as a nested dict (dict fields with a schema expanded)."""
    tree: dict[str, Any] = {}
    hints = typing.get_type_hints(schema)
    for spec in dataclasses.fields(schema):
        kind = hints.get(spec.name)
        if dataclasses.is_dataclass(kind):
            tree[spec.name] = defaults_tree(kind)
            continue
        if spec.default is not dataclasses.MISSING:
            value = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            value = spec.default_factory()
        else:
            value = None
        nested = spec.metadata.get("schema")
        if nested is not None:
            value = {**_jsonable(dataclasses.asdict(nested())), **(value or {})}
        tree[spec.name] = value
    return tree


def _jsonable(value):
    """Tuples -> lists recursively, so defaults compare and print like YAML values."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _open_keys(schema) -> set[str]:
    """Names of dict fields whose keys are free (``metadata={"free_keys": True}``)."""
    return {spec.name for spec in dataclasses.fields(schema) if spec.metadata.get("free_keys")}


def merge_into(tree: dict[str, Any], updates: Mapping[str, Any], schema=None, prefix: str = "") -> None:
    """Merge nested ``updates`` into ``tree`` in place; keys missing from ``tree`` are an error."""
    free = _open_keys(schema) if schema is not None else set()
    hints = typing.get_type_hints(schema) if schema is not None else {}
    for key, value in updates.items():
        dotted = f"{prefix}{key}"
        if key not in tree:
            valid = ", ".join(sorted(tree)) or "(none)"
            raise ConfigError(f"config key {dotted!r} is unknown; valid keys{' under ' + prefix[:-1] if prefix else ''}: {valid}")
        current = tree[key]
        kind = hints.get(key)
        if isinstance(current, dict) and key not in free:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {dotted!r} is a section; give its keys ({', '.join(sorted(current))}), not {value!r}")
            merge_into(current, value, kind if dataclasses.is_dataclass(kind) else None, f"{dotted}.")
        elif isinstance(current, dict) and isinstance(value, Mapping):
            current.update(value)
        else:
            tree[key] = _check_type(dotted, current, value)


def _check_type(dotted: str, current: Any, value: Any) -> Any:
    """Keep numbers numbers (an int may replace a float; a string may not replace a number), lists lists."""
    if current is None or value is None:
        return value
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):  # "3e-4" in a YAML file
        value = float(value)
    if isinstance(current, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {dotted!r}: expected a list like {list(current)}, got {value!r}")
        numbers = current and all(_is_number(item) for item in current)
        if numbers and not all(_is_number(item) for item in value):
            raise ConfigError(f"config key {dotted!r}: expected a list of numbers like {list(current)}, got {value!r}")
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {dotted!r}: expected true/false, got {value!r}")
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, (int, float)) and not isinstance(value, (int, float)):
        raise ConfigError(f"config key {dotted!r}: expected a number, got {value!r}")
    if isinstance(current, int) and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"config key {dotted!r}: expected an integer, got {value!r}")
    if isinstance(current, int) and isinstance(value, float):
        return int(value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any, schema=None) -> None:
    """Apply one ``a.b.c = value`` override to a nested dict, validating every level."""
    nested: Any = value
    for part in reversed(dotted.split(".")):
        nested = {part: nested}
    merge_into(tree, nested, schema)


def build(schema, tree: Mapping[str, Any]):
    """Nested dict -> dataclass instance of ``schema`` (tuples where the default is a tuple)."""
    hints = typing.get_type_hints(schema)
    values = {}
    for spec in dataclasses.fields(schema):
        kind = hints.get(spec.name)
        value = tree[spec.name]
        values[spec.name] = build(kind, value) if dataclasses.is_dataclass(kind) else value
    return schema(**values)


def load_config(path: str | Path | None, overrides: Iterable[str] = (), *, schema):
    """Defaults of ``schema`` <- YAML file ``path`` <- ``overrides`` (``key.sub=value`` strings).

    Returns:
        an instance of ``schema`` (a dataclass whose fields are the sections).

    Raises:
        ConfigError: unreadable file, unknown key (named, with the valid keys listed),
            wrong value type.
    """
    tree = defaults_tree(schema)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found; give an existing YAML file (see recipes/configs/)")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from error
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(loaded).__name__}")
        try:
            merge_into(tree, loaded, schema)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
    for text in overrides:
        key, value = parse_override(text)
        try:
            set_dotted(tree, key, value, schema)
        except ConfigError as error:
            raise ConfigError(f"command line {text!r}: {error}") from None
    return build(schema, tree)


def config_to_dict(config) -> dict[str, Any]:
    """A dataclass config as a plain nested dict (for logging and ``config.yaml`` in the output dir)."""
    return _jsonable(dataclasses.asdict(config))


__all__ = ["ConfigError", "build", "config_to_dict", "defaults_tree", "load_config", "merge_into", "parse_override",
           "set_dotted"]
