"""Experiment: loss / memory choices the paper leaves open, decided on a fixed small CPU budget.

(a) memory_scale: softmax(scale * cos) addressing (eq. 2). scale 1 is the paper-literal form; with ~2000 slots it is
    nearly uniform (max weight <= 1 / (1 + (M-1) e^-2)). Compared: 1 (baseline) vs 5, 10, 20.
(b) rseg_form: eq. 4 'literal' (d_y - sum_{j!=y} d_j + m) vs 'per_negative' (mean_j max(0, d_y - d_j + m)).

Each run trains `small_config` MPNet (full model: InsMem + SegMem + Regul) with MPNetLoss on a handful of synthetic
blocks (floor, wall and 2-3 boxes of random class, size, place and colour) for a fixed number of Adam steps, then
evaluates on held-out synthetic blocks: semantic accuracy, addressing entropy / max weight of both readers, how often
the R_seg hinge is active (both forms), and held-out loss terms. Ratios are against the paper-literal baseline
(scale 1, per_negative) of the same run.

    PYTHONPATH=. .venv/bin/python benchmarks/exp_loss_choices.py            # ~ a few minutes on 1 CPU core
    PYTHONPATH=. .venv/bin/python benchmarks/exp_loss_choices.py --steps 40 --seeds 1   # smoke run
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mpnet_model.config import small_config
from mpnet_model.data.classes import S3DIS_CLASSES
from mpnet_model.io.atomic import atomic_write_text
from mpnet_model.model.losses import MPNetLoss, rseg_hinge
from mpnet_model.model.mpnet import MPNet

FLOOR, WALL = S3DIS_CLASSES.index('floor'), S3DIS_CLASSES.index('wall')
OBJECT_CLASSES = tuple(S3DIS_CLASSES.index(name) for name in ('table', 'chair', 'sofa', 'bookcase'))
# Base colour per class (objects of one class share a hue; instances jitter around it).
CLASS_COLOURS = {FLOOR: (0.5, 0.5, 0.5), WALL: (0.85, 0.85, 0.8), OBJECT_CLASSES[0]: (0.6, 0.35, 0.15),
                 OBJECT_CLASSES[1]: (0.2, 0.25, 0.7), OBJECT_CLASSES[2]: (0.7, 0.2, 0.25),
                 OBJECT_CLASSES[3]: (0.3, 0.6, 0.3)}


def _box_surface(rng: np.random.Generator, low: np.ndarray, high: np.ndarray, count: int) -> np.ndarray:
    """Uniform points on the 6 faces of an axis-aligned box: (count, 3)."""
    xyz = rng.uniform(low, high, (count, 3))
    axis = rng.integers(0, 3, count)
    on_high = rng.integers(0, 2, count) == 1
    xyz[np.arange(count), axis] = np.where(on_high, high[axis], low[axis])
    return xyz


def make_block(rng: np.random.Generator, num_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random 1 m block -> points (N, 9) float32 (ASIS channels), sem (N,), ins (N,) int64."""
    num_objects = int(rng.integers(2, 4))
    shares = rng.dirichlet(np.full(2 + num_objects, 4.0))
    counts = np.maximum((shares * num_points).astype(int), 16)
    counts[0] += num_points - counts.sum()                           # floor absorbs the rounding
    parts_xyz, parts_sem = [], []
    floor = np.column_stack([rng.uniform(0, 1, (counts[0], 2)), rng.normal(0, 0.005, counts[0])])
    wall_axis = int(rng.integers(0, 2))                              # wall at x=0 or y=0
    wall = rng.uniform(0, 1, (counts[1], 3)) * np.array([1, 1, 2.0])
    wall[:, wall_axis] = rng.normal(0, 0.005, counts[1])
    parts_xyz += [floor, wall]
    parts_sem += [FLOOR, WALL]
    for count in counts[2:]:
        size = rng.uniform([0.15, 0.15, 0.3], [0.45, 0.45, 0.9])
        low = np.append(rng.uniform(0.1, 0.95 - size[:2]), 0.0)
        parts_xyz.append(_box_surface(rng, low, low + size, count))
        parts_sem.append(int(rng.choice(OBJECT_CLASSES)))
    xyz = np.concatenate(parts_xyz)
    sem = np.repeat(parts_sem, counts)
    ins = np.repeat(np.arange(len(counts)), counts)
    colour_per_part = np.array([CLASS_COLOURS[c] for c in parts_sem]) + rng.normal(0, 0.05, (len(counts), 3))
    rgb = np.clip(np.repeat(colour_per_part, counts, axis=0) + rng.normal(0, 0.03, (num_points, 3)), 0, 1)
    centred = xyz - np.array([0.5, 0.5, 0.0])
    room_normalised = xyz / np.maximum(xyz.max(0), 1e-6)
    points = np.concatenate([centred, rgb, room_normalised], axis=1).astype(np.float32)
    order = rng.permutation(num_points)
    return points[order], sem[order].astype(np.int64), ins[order].astype(np.int64)


def make_blocks(count: int, num_points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    blocks = [make_block(rng, num_points) for _ in range(count)]
    return tuple(torch.from_numpy(np.stack(parts)) for parts in zip(*blocks))


@dataclass
class RunResult:
    name: str
    seconds: float
    train_terms: dict[str, float]      # mean of the last 10 steps
    eval_terms: dict[str, float]
    accuracy: float
    ins_entropy: float                 # mean normalised entropy of ins_weights (1 = uniform)
    ins_max_weight: float
    seg_entropy: float
    seg_max_weight: float
    hinge_active: dict[str, float]     # fraction of active R_seg hinges per form, on held-out points


def _addressing_stats(weights: torch.Tensor) -> tuple[float, float]:
    """weights (B, N, K) -> (mean entropy / log K, mean max weight)."""
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1) / math.log(weights.shape[-1])
    return entropy.mean().item(), weights.max(-1).values.mean().item()


def run(name: str, overrides: dict, data: dict, steps: int, batch: int, lr: float, seed: int) -> RunResult:
    torch.manual_seed(seed)
    cfg = small_config(num_points=data['train'][0].shape[1], **overrides)
    model = MPNet(cfg).train()
    criterion = MPNetLoss(cfg)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    train_points, train_sem, train_ins = data['train']
    # FPS is deterministic per block: compute once, outside the timed loop's hot path.
    train_indices = model.sample_indices(train_points[..., :3])
    generator = torch.Generator().manual_seed(seed)
    history = []
    start = time.perf_counter()
    for _ in tqdm(range(steps), desc=name, leave=False, file=sys.stderr):
        pick = torch.randperm(train_points.shape[0], generator=generator)[:batch]
        indices = [level[pick] for level in train_indices]
        outputs = model(train_points[pick], indices)
        total, terms = criterion(outputs, train_points[pick], train_sem[pick], train_ins[pick],
                                 model.semantic_memory())
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        history.append({key: value.item() for key, value in terms.items()})
    seconds = time.perf_counter() - start

    model.eval()
    eval_points, eval_sem, eval_ins = data['eval']
    with torch.no_grad():
        outputs = model(eval_points)
        class_memory = model.semantic_memory()
        _, eval_terms = criterion(outputs, eval_points, eval_sem, eval_ins, class_memory)
        accuracy = (outputs['sem_logits'].argmax(-1) == eval_sem).float().mean().item()
        ins_entropy, ins_max = _addressing_stats(outputs['ins_weights'])
        seg_entropy, seg_max = _addressing_stats(outputs['seg_weights'])
        hinge_active = {form: (rseg_hinge(outputs['f_seg_aug'], class_memory, eval_sem, cfg.rseg_margin, form) > 0)
                        .float().mean().item() for form in ('literal', 'per_negative')}
    last = history[-10:]
    train_terms = {key: float(np.mean([step[key] for step in last])) for key in last[0]}
    return RunResult(name, seconds, train_terms, {k: v.item() for k, v in eval_terms.items()}, accuracy,
                     ins_entropy, ins_max, seg_entropy, seg_max, hinge_active)


def average(results: list[RunResult]) -> RunResult:
    """Mean over seeds of every number in the results of one configuration."""
    def mean_dict(dicts):
        return {key: float(np.mean([d[key] for d in dicts])) for key in dicts[0]}
    return RunResult(results[0].name, float(np.mean([r.seconds for r in results])),
                     mean_dict([r.train_terms for r in results]), mean_dict([r.eval_terms for r in results]),
                     *(float(np.mean([getattr(r, f) for r in results]))
                       for f in ('accuracy', 'ins_entropy', 'ins_max_weight', 'seg_entropy', 'seg_max_weight')),
                     mean_dict([r.hinge_active for r in results]))


def format_table(results: list[RunResult], baseline: RunResult) -> str:
    header = ('| run | acc | acc / base | ins H/logM | ins max w | seg H/logC | seg max w '
              '| hinge on (lit / per-neg) | train ce | train dis | train rseg | train rins '
              '| eval ce | eval ce / base | eval dis | eval rins | s/run |')
    lines = [header, '|' + '---|' * header.count(' | ') + '---|']
    for r in results:
        lines.append(
            f"| {r.name} | {r.accuracy:.3f} | {r.accuracy / max(baseline.accuracy, 1e-9):.2f} | {r.ins_entropy:.3f} "
            f"| {r.ins_max_weight:.4f} | {r.seg_entropy:.3f} | {r.seg_max_weight:.3f} "
            f"| {r.hinge_active['literal']:.2f} / {r.hinge_active['per_negative']:.2f} "
            f"| {r.train_terms['ce']:.3f} | {r.train_terms['dis']:.3f} | {r.train_terms['rseg']:.3f} "
            f"| {r.train_terms['rins']:.4f} | {r.eval_terms['ce']:.3f} "
            f"| {r.eval_terms['ce'] / baseline.eval_terms['ce']:.2f} | {r.eval_terms['dis']:.3f} "
            f"| {r.eval_terms['rins']:.4f} | {r.seconds:.0f} |")
    return '\n'.join(lines)


RUNS = {
    'scale1_pern (paper-literal)': dict(memory_scale=1.0, rseg_form='per_negative'),
    'scale5_pern': dict(memory_scale=5.0, rseg_form='per_negative'),
    'scale10_pern': dict(memory_scale=10.0, rseg_form='per_negative'),
    'scale20_pern': dict(memory_scale=20.0, rseg_form='per_negative'),
    'scale1_literal': dict(memory_scale=1.0, rseg_form='literal'),
    'scale10_literal': dict(memory_scale=10.0, rseg_form='literal'),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=250)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--points', type=int, default=512, help='points per block')
    parser.add_argument('--train-blocks', type=int, default=6)
    parser.add_argument('--eval-blocks', type=int, default=4)
    parser.add_argument('--lr', type=float, default=3e-3)
    parser.add_argument('--seeds', type=int, default=2)
    parser.add_argument('--runs', nargs='*', default=list(RUNS), choices=list(RUNS))
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', type=Path, default=Path(__file__).parent / 'results' / 'exp_loss_choices.md')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = {'train': make_blocks(args.train_blocks, args.points, seed=100),
            'eval': make_blocks(args.eval_blocks, args.points, seed=200)}
    results = []
    for name in args.runs:
        per_seed = [run(name, RUNS[name], data, args.steps, args.batch, args.lr, seed) for seed in range(args.seeds)]
        results.append(average(per_seed))
        print(f'{name}: acc {results[-1].accuracy:.3f}, eval ce {results[-1].eval_terms["ce"]:.3f}, '
              f'ins max w {results[-1].ins_max_weight:.4f}, hinge {results[-1].hinge_active}', flush=True)
    baseline = results[0]
    command = 'PYTHONPATH=. .venv/bin/python benchmarks/exp_loss_choices.py ' + ' '.join(sys.argv[1:])
    table = format_table(results, baseline)
    print(table)
    report = (f'# exp_loss_choices\n\nCommand: `{command.strip()}`\n\n'
              f'steps={args.steps} batch={args.batch} points={args.points} train_blocks={args.train_blocks} '
              f'eval_blocks={args.eval_blocks} lr={args.lr} seeds={args.seeds} (numbers are seed means), '
              f'baseline = {baseline.name}. small_config: M = {small_config().memory_slots} slots, '
              f'C = {small_config().num_classes}.\n\n{table}\n')
    atomic_write_text(args.out, report)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
