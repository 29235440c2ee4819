"""The one checkpoint format of mpnet_ros.

A checkpoint is a plain dict, loadable with `torch.load(weights_only=True)`:
    {'format': 'mpnet_ros-checkpoint', 'version': <package version>, 'config': ModelConfig.to_dict() (lists),
     'class_names': [...], 'state_dict': {name: tensor}, 'extra': {...}}
`extra` holds caller data (epoch, metrics, optimizer state, ...) made of dicts / lists / str / int / float /
bool / None / tensors only. Files are written atomically (temp file in the same directory + os.replace).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mpnet_model import __version__
from mpnet_model.config import ConfigError, ModelConfig
from mpnet_model.io.atomic import atomic_write
from mpnet_model.model.mpnet import MPNet

CHECKPOINT_FORMAT = 'mpnet_ros-checkpoint'
_REQUIRED_KEYS = ('format', 'version', 'config', 'class_names', 'state_dict', 'extra')


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or used; the message names the file and the problem."""


def _weights_only_safe(value: Any, where: str) -> Any:
    """Convert `value` to types `torch.load(weights_only=True)` accepts (tuples -> lists, numpy -> torch/python).

    Raises TypeError naming the offending key path for anything else (arbitrary objects would need pickle).
    """
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        converted = {}
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f'{where}: key {key!r} is a {type(key).__name__}; use str or int keys')
            converted[key] = _weights_only_safe(item, f'{where}[{key!r}]')
        return converted
    if isinstance(value, (list, tuple)):
        return [_weights_only_safe(item, f'{where}[{i}]') for i, item in enumerate(value)]
    raise TypeError(f'{where}: {type(value).__name__} cannot be stored in a weights_only checkpoint; '
                    'use dict / list / str / int / float / bool / None / tensor')


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / DataParallel (`.module`) or torch.compile (`._orig_mod`),
    so that state_dict keys never carry a wrapper prefix."""
    for attribute in ('module', '_orig_mod'):
        inner = getattr(model, attribute, None)
        if isinstance(inner, nn.Module):
            return _unwrap(inner)
    return model


def save_checkpoint(path: str | os.PathLike, model: nn.Module, cfg: ModelConfig,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write `model`'s weights (unwrapped from DDP / torch.compile) with its config atomically to `path`
    (parent folders are created). Returns the path."""
    path = Path(path)
    try:
        payload = {
            'format': CHECKPOINT_FORMAT,
            'version': __version__,
            'config': _weights_only_safe(cfg.to_dict(), 'config'),
            'class_names': list(cfg.class_names),
            'state_dict': {name: tensor.detach().cpu() for name, tensor in _unwrap(model).state_dict().items()},
            'extra': _weights_only_safe(dict(extra or {}), 'extra'),
        }
    except TypeError as error:
        raise CheckpointError(f'{path}: cannot save checkpoint: {error}') from error
    with atomic_write(path) as stream:
        torch.save(payload, stream)
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = 'cpu') -> dict[str, Any]:
    """Load and validate the raw checkpoint dict (format and keys; not yet the state_dict against a model)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'{path}: checkpoint file not found')
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError / EOFError / UnpicklingError / zipfile errors
        raise CheckpointError(f'{path}: cannot read checkpoint (corrupt, truncated or not a torch file): '
                              f'{type(error).__name__}: {error}') from error
    if not isinstance(payload, dict) or payload.get('format') != CHECKPOINT_FORMAT:
        found = payload.get('format') if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f'{path}: not an {CHECKPOINT_FORMAT} file (format={found!r}); '
                              'was it written by mpnet_model.model.checkpoint.save_checkpoint?')
    missing = [key for key in _REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f'{path}: checkpoint lacks key(s) {missing}')
    return payload


def _state_dict_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between the model's state_dict and the checkpoint's."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f'missing in checkpoint: {missing}')
    if unexpected:
        problems.append(f'not in model: {unexpected}')
    for name in sorted(set(expected) & set(found)):
        if not isinstance(found[name], torch.Tensor):
            problems.append(f'{name}: not a tensor ({type(found[name]).__name__})')
        elif tuple(found[name].shape) != tuple(expected[name].shape):
            problems.append(f'{name}: checkpoint shape {tuple(found[name].shape)} != model shape '
                            f'{tuple(expected[name].shape)}')
    return problems


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = 'cpu'
                    ) -> tuple[MPNet, ModelConfig, dict[str, Any]]:
    """Rebuild the MPNet stored at `path`: returns (model in eval mode on `map_location`, cfg, meta).

    meta = {'version', 'class_names', 'extra', 'path'}.
    """
    payload = read_checkpoint(path, map_location)
    try:
        cfg = ModelConfig.from_stored(payload['config'])
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f'{path}: invalid model config in checkpoint: {error}') from error
    if list(payload['class_names']) != list(cfg.class_names):
        raise CheckpointError(f'{path}: class_names {payload["class_names"]} disagree with the config\'s '
                              f'{list(cfg.class_names)}')
    model = MPNet(cfg)
    state_dict = payload['state_dict']
    if not isinstance(state_dict, dict):
        raise CheckpointError(f'{path}: state_dict is a {type(state_dict).__name__}, expected a dict of tensors')
    problems = _state_dict_mismatch(model.state_dict(), state_dict)
    if problems:
        raise CheckpointError(f'{path}: weights do not match the stored config: ' + '; '.join(problems))
    model.load_state_dict(state_dict)
    model.to(map_location).eval()
    meta = {'version': payload['version'], 'class_names': list(payload['class_names']),
            'extra': payload['extra'], 'path': str(path)}
    return model, cfg, meta


def update_checkpoint_extra(path: str | os.PathLike, updates: dict[str, Any]) -> Path:
    """Merge `updates` into the `extra` of the checkpoint at `path` and rewrite it atomically (weights, config and
    everything else unchanged; a reader never sees a half-written file)."""
    path = Path(path)
    payload = read_checkpoint(path)
    if not isinstance(payload['extra'], dict):
        raise CheckpointError(f'{path}: extra is a {type(payload["extra"]).__name__}, expected a dict')
    try:
        payload['extra'] = {**payload['extra'], **_weights_only_safe(dict(updates), 'extra')}
    except TypeError as error:
        raise CheckpointError(f'{path}: cannot update checkpoint: {error}') from error
    with atomic_write(path) as stream:
        torch.save(payload, stream)
    return path
