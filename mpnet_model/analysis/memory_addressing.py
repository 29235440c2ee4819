"""How selectively the memory is read (eq. 2), over a `memory_scale` sweep.

The reader is softmax(scale * cos(f, m_k)). With the paper-literal scale 1 the cosine's range [-1, 1] bounds the
largest weight by e^2 / (e^2 + M - 1), so over M slots the read is close to the uniform average and f̂ = w M barely
varies from point to point. For every scale of `analysis.sweep_memory_scale` this trains `analysis.sweep_row`,
evaluates it like every other run and measures on `analysis.addressing_blocks` blocks of the evaluated rooms:

* `ins_entropy` / `seg_entropy`: mean entropy of the addressing weights over the M slots (instance reader) or the
  C rows of the semantic memory, divided by its maximum log M (log C): 1 = uniform;
* `ins_max_weight` / `seg_max_weight`: mean largest weight (uniform: 1/M, 1/C);
* `ins_spread` / `seg_spread`: spread of the read feature f̂ across points relative to the query's, i.e. the mean
  over feature channels of std over points of f̂ divided by that of f (0 = every point reads the same vector).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from mpnet_model.analysis import AnalysisConfig
from mpnet_model.analysis.ablation import (
    OVERSEG_COLUMNS,
    SUMMARY_COLUMNS,
    RunResult,
    _json_safe,
    evaluation_rooms,
    format_metric,
    markdown_table,
    mean_std,
    row_runs,
)
from mpnet_model.io.atomic import atomic_write_text
from mpnet_model.train.config import TrainConfig

log = logging.getLogger(__name__)

ADDRESSING_FILE = 'addressing.json'
STAT_KEYS = ('ins_entropy', 'ins_max_weight', 'ins_spread', 'seg_entropy', 'seg_max_weight', 'seg_spread')


class _Spread:
    """Streaming per-channel std over points (float64 sums), for the read feature and its query."""

    def __init__(self):
        self.count, self.sums, self.squares = 0, None, None

    def add(self, features: torch.Tensor) -> None:
        flat = features.reshape(-1, features.shape[-1]).double()
        if self.sums is None:
            self.sums, self.squares = torch.zeros(flat.shape[1], dtype=torch.float64), torch.zeros(
                flat.shape[1], dtype=torch.float64)
        self.count += flat.shape[0]
        self.sums += flat.sum(0)
        self.squares += (flat * flat).sum(0)

    def mean_std(self) -> float:
        mean = self.sums / self.count
        return float((self.squares / self.count - mean * mean).clamp_min(0).sqrt().mean())


def _entropy_and_max(weights: torch.Tensor) -> tuple[float, float]:
    """Sum over points of the normalised entropy and of the largest weight; weights (..., K)."""
    flat = weights.reshape(-1, weights.shape[-1]).double()
    entropy = -(flat * flat.clamp_min(1e-300).log()).sum(1) / math.log(flat.shape[1])
    return float(entropy.sum()), float(flat.max(1).values.sum())


@torch.no_grad()
def addressing_stats(model: torch.nn.Module, blocks: np.ndarray, batch_size: int = 8) -> dict[str, float]:
    """The addressing statistics of the module docstring on `blocks` (K, P, in_channels); NaN for a reader the
    model does not have (no instance / semantic memory)."""
    model.eval()
    sums = dict.fromkeys(('ins_entropy', 'ins_max_weight', 'seg_entropy', 'seg_max_weight'), 0.0)
    spreads = {key: _Spread() for key in ('f_ins', 'f_ins_aug', 'f_seg', 'f_seg_aug')}
    points = 0
    for start in range(0, blocks.shape[0], batch_size):
        outputs = model(torch.from_numpy(np.ascontiguousarray(blocks[start:start + batch_size], dtype=np.float32)))
        points += outputs['f_ins'].shape[0] * outputs['f_ins'].shape[1]
        for reader in ('ins', 'seg'):
            weights = outputs[f'{reader}_weights']
            if weights is None:
                continue
            entropy, max_weight = _entropy_and_max(weights)
            sums[f'{reader}_entropy'] += entropy
            sums[f'{reader}_max_weight'] += max_weight
            spreads[f'f_{reader}'].add(outputs[f'f_{reader}'])
            spreads[f'f_{reader}_aug'].add(outputs[f'f_{reader}_aug'])
    stats = {}
    for reader, enabled in (('ins', model.cfg.use_ins_memory), ('seg', model.cfg.use_seg_memory)):
        if not enabled or points == 0:
            stats.update({f'{reader}_{k}': float('nan') for k in ('entropy', 'max_weight', 'spread')})
            continue
        stats[f'{reader}_entropy'] = sums[f'{reader}_entropy'] / points
        stats[f'{reader}_max_weight'] = sums[f'{reader}_max_weight'] / points
        query = spreads[f'f_{reader}'].mean_std()
        stats[f'{reader}_spread'] = spreads[f'f_{reader}_aug'].mean_std() / query if query > 0 else float('nan')
    stats['slots'] = float(model.memory.num_slots) if model.memory is not None else float('nan')
    return stats


def addressing_blocks(base: TrainConfig, acfg: AnalysisConfig, num_points: int, progress: bool = True
                      ) -> np.ndarray:
    """The first `acfg.addressing_blocks` inference blocks of the evaluated rooms (the segmenter's sampling)."""
    from mpnet_model.analysis.visualise import scene_blocks
    from mpnet_model.data.room import load_room_npz

    parts, total = [], 0
    for path in evaluation_rooms(base, acfg, progress):
        blocks = scene_blocks(load_room_npz(path), num_points, base.data.block_size, base.data.stride)
        parts.append(blocks.points[:acfg.addressing_blocks - total])
        total += parts[-1].shape[0]
        if total >= acfg.addressing_blocks:
            break
    return np.concatenate(parts)


def run_addressing(result: RunResult, base: TrainConfig, acfg: AnalysisConfig, progress: bool = True
                   ) -> dict[str, float]:
    """Addressing statistics of a run's best.pt, cached in its eval/addressing.json."""
    from mpnet_model.model.checkpoint import load_checkpoint

    path = result.folder / 'eval' / ADDRESSING_FILE
    if path.is_file():
        return {k: float('nan') if v is None else float(v) for k, v in json.loads(path.read_text()).items()}
    model, cfg, _ = load_checkpoint(result.checkpoint)
    stats = addressing_stats(model, addressing_blocks(base, acfg, cfg.num_points, progress), acfg.eval_batch_size)
    atomic_write_text(path, json.dumps(_json_safe(stats), indent=1))
    return stats


def scale_figure(scales: list[float], stats: list[dict], metrics: list[dict], path: Path, title: str) -> Path:
    """Left: entropy, largest weight and f̂ spread of the instance reader against the scale; right: mPrec, mRec,
    mIoU and the split share in % (± std over seeds)."""
    from mpnet_model.viz.render import new_figure, save_figure

    fig = new_figure(10, 3.8)
    x = np.asarray(scales, dtype=np.float64)
    left = fig.add_subplot(1, 2, 1)
    for key, label in (('ins_entropy', 'instance H / log M'), ('ins_spread', 'instance spread f̂ / f'),
                       ('seg_entropy', 'semantic H / log C'), ('ins_max_weight', 'instance max weight')):
        left.plot(x, [s[key] for s in stats], marker='o', label=label)
    left.set_xscale('log')
    left.set_xlabel('memory_scale')
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    left.set_title('addressing', fontsize=10)
    right = fig.add_subplot(1, 2, 2)
    for key, label in (('mPrec', 'mPrec'), ('mRec', 'mRec'), ('mIoU', 'mIoU'), ('mSplit', 'split share')):
        mean = np.array([100 * m[key][0] for m in metrics])
        std = np.array([100 * m[key][1] for m in metrics])
        right.errorbar(x, mean, yerr=np.where(np.isnan(std), 0.0, std), marker='o', capsize=3, label=label)
    right.set_xscale('log')
    right.set_xlabel('memory_scale')
    right.set_ylabel('%')
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    right.set_title('whole-room metrics', fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def run_scale_sweep(base: TrainConfig, acfg: AnalysisConfig, out_dir: str | Path, progress: bool = True
                    ) -> dict[str, Path]:
    """Train / evaluate `acfg.sweep_row` for every `acfg.sweep_memory_scale`, measure its addressing and write
    memory_scale.md, .json and .png to `out_dir`. The scale of the base config shares the ablation's runs."""
    from mpnet_model.config import ABLATIONS

    row = ABLATIONS[acfg.sweep_row]
    if not (row['use_ins_memory'] or row['use_seg_memory']):
        raise ValueError(f'analysis.sweep_row={acfg.sweep_row!r} uses no memory: the scale changes nothing')
    out_dir = Path(out_dir)
    scales = sorted({float(s) for s in acfg.sweep_memory_scale})
    stats, metrics = [], []
    for scale in scales:
        overrides = () if scale == base.model.memory_scale else (('memory_scale', scale),)
        results = row_runs(base, acfg, acfg.sweep_row, out_dir, progress, overrides=overrides)
        per_seed = [run_addressing(r, base, acfg, progress) for r in results]
        stats.append({k: mean_std([s[k] for s in per_seed])[0] for k in (*STAT_KEYS, 'slots')})
        metrics.append({k: mean_std([r.summary.get(k, float('nan')) for r in results])
                        for k in SUMMARY_COLUMNS + OVERSEG_COLUMNS})
    columns = ('mPrec', 'mRec', 'mCov', 'mIoU', *OVERSEG_COLUMNS)
    rows = [[f'{scale:g}', f'{s["ins_entropy"]:.3f}', f'{s["ins_max_weight"]:.4f}', f'{s["ins_spread"]:.3f}',
             f'{s["seg_entropy"]:.3f}', f'{s["seg_max_weight"]:.3f}', f'{s["seg_spread"]:.3f}']
            + [format_metric(c, *m[c]) for c in columns] for scale, s, m in zip(scales, stats, metrics)]
    slots = int(stats[0]['slots']) if not math.isnan(stats[0]['slots']) else 0
    title = f'memory_scale sweep, row {acfg.sweep_row!r}, M = {slots} slots, seeds {acfg.seeds}'
    png = scale_figure(scales, stats, metrics, out_dir / 'memory_scale.png', title)
    text = '\n'.join([
        f'# {title}', '',
        f'Addressing measured on {acfg.addressing_blocks} inference blocks of the {acfg.split} rooms (seed means); '
        'H = entropy of the addressing weights / its maximum (1 = uniform), max w = mean largest weight '
        f'(uniform: 1/M = {1 / slots if slots else float("nan"):.4f}, 1/C = {1 / base.model.num_classes:.4f}), '
        'spread = std over points of the read feature f̂ / that of the query f (mean over channels). '
        'Metrics: whole rooms, % (mFrag a ratio).', '',
        markdown_table(['scale', 'ins H/logM', 'ins max w', 'ins spread f̂/f', 'seg H/logC', 'seg max w',
                        'seg spread', *columns], rows), '', '![memory scale](memory_scale.png)', ''])
    table = atomic_write_text(out_dir / 'memory_scale.md', text)
    data = {f'{scale:g}': {'addressing': s, 'metrics': {k: {'mean': m, 'std': d} for k, (m, d) in metric.items()}}
            for scale, s, metric in zip(scales, stats, metrics)}
    raw = atomic_write_text(out_dir / 'memory_scale.json', json.dumps(_json_safe(data), indent=1))
    return {'table': table, 'json': raw, 'plot': png}
