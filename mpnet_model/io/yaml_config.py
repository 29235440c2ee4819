"""YAML config files: a mapping per file, `section.key=value` overrides, values cast to their defaults' types.

Shared by the training config (`mpnet_model.train.config`), the data config every consumer reads
(`mpnet_model.data.config`) and the analysis config, so each sees the same errors for the same mistakes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from mpnet_model.config import ConfigError


def coerce(section: str, key: str, value: Any, default: Any) -> Any:
    """Cast a YAML/CLI value to the type of the default, with an error naming the key."""
    name = f'{section}.{key}'
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ('true', 'false', '1', '0', 'yes', 'no'):
            return value.lower() in ('true', '1', 'yes')
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            if isinstance(value, (str, float)) and float(value) == int(float(value)):
                return int(float(value))
        except (ValueError, OverflowError):
            pass
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, str):
        return str(value)
    raise ConfigError(f'config: {name}={value!r}: expected {type(default).__name__}')


def build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f'config: section {section!r} must be a mapping, got {values!r}')
    defaults = cls()
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f'config: unknown key(s) {[f"{section}.{k}" for k in unknown]}; '
                          f'known: {sorted(known)}')
    return cls(**{k: coerce(section, k, v, getattr(defaults, k)) for k, v in values.items()})


def parse_override(text: str) -> tuple[list[str], Any]:
    if '=' not in text:
        raise ConfigError(f'override {text!r}: expected key.sub=value')
    key, raw = text.split('=', 1)
    return key.strip().split('.'), yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides) -> dict[str, Any]:
    """A copy of the sectioned mapping `data` with `section.key=value` (or `key=value`) overrides applied."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in (data or {}).items()}
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 1:
            data[path[0]] = value
        elif len(path) == 2:
            data.setdefault(path[0], {})[path[1]] = value
        else:
            raise ConfigError(f'override {text!r}: use section.key=value')
    return data


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file gives {}); errors start with `what` and name the file.

    `what` says which kind of file this is, e.g. 'train config' or 'analysis config'.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'{what} file not found: {path}')
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f'{what} {path}: invalid YAML: {err}') from err
    if not isinstance(data, dict):
        raise ConfigError(f'{what} {path}: top level must be a mapping')
    return data
