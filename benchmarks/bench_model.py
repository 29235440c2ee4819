"""Benchmark: MPNet forward time on CPU for one 4096-point block (batch 1) and a batch of 8, default config.

Per configuration it measures, with the same random blocks:
  FPS      `model.sample_indices` (the sequential farthest point sampling of all SA levels; runtimes do it outside
           the network graph), shown separately and as a share of the total;
  network  `model(points, sample_indices)` in inference mode (SA grouping, FP decoders, memory reads, heads);
  memory   the two memory reads alone (eq. 2 on M and on C) on random features of the same shape.
The baseline is the memory-free ablation ('baseline' preset, ASIS-like) measured in the same run; ratios are
MPNet / baseline. Reported: the best of --repeats interleaved rounds after a warm-up round, as CPU and wall time.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_model.py [--repeats 3] [--threads 1] [--batches 1 8]
Writes benchmarks/results/model.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from tqdm import tqdm

from mpnet_model.config import ModelConfig, ablation_config
from mpnet_model.io.atomic import atomic_write_text
from mpnet_model.model.mpnet import MPNet

RESULTS = Path(__file__).resolve().parent / 'results' / 'model.md'


class Timer:
    """Best (minimum) wall and process-CPU time of repeated calls. On a shared machine the minimum is the least
    disturbed run, and with one intra-op thread CPU time is close to the work itself, whatever the load."""

    def __init__(self) -> None:
        self.wall, self.cpu = float('inf'), float('inf')

    def run(self, fn) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.wall = min(self.wall, time.perf_counter() - wall)
        self.cpu = min(self.cpu, time.process_time() - cpu)


class Case:
    """One model at one batch size: its timed stages (FPS, network, memory reads) on fixed random blocks."""

    def __init__(self, cfg: ModelConfig, batch: int):
        torch.manual_seed(0)
        self.model = MPNet(cfg).eval()
        generator = torch.Generator().manual_seed(batch)
        self.points = torch.rand(batch, cfg.num_points, cfg.in_channels, generator=generator)
        self.query = torch.randn(batch, cfg.num_points, cfg.feature_dim, generator=generator)
        with torch.inference_mode():
            self.indices = self.model.sample_indices(self.points[..., :3])
        self.timers = {'fps': Timer(), 'network': Timer(), 'memory': Timer()}

    def read_memory(self) -> None:
        memory = self.model.memory
        memory.read(self.query, memory.memory)
        memory.read(self.query, memory.semantic_memory())

    def run_once(self) -> None:
        with torch.inference_mode():
            self.timers['fps'].run(lambda: self.model.sample_indices(self.points[..., :3]))
            self.timers['network'].run(lambda: self.model(self.points, self.indices))
            if self.model.memory is not None:
                self.timers['memory'].run(self.read_memory)

    def figures(self, kind: str) -> dict[str, float]:
        values = {name: getattr(timer, kind) for name, timer in self.timers.items()}
        values['memory'] = 0.0 if self.model.memory is None else values['memory']
        values['total'] = values['fps'] + values['network']
        return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1, help='torch intra-op threads (the CI box is shared)')
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 8])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    configs = {'baseline (no memory)': ablation_config('baseline'), 'MPNet (full)': ModelConfig()}
    cases = {(name, batch): Case(cfg, batch) for batch in args.batches for name, cfg in configs.items()}
    # Warm-up round (first-call allocations, oneDNN primitives), then rounds interleaved over the cases so that
    # load changes on the shared machine hit baseline and MPNet alike.
    for round_index in tqdm(range(args.repeats + 1), desc='bench_model', unit='round'):
        for case in cases.values():
            if round_index == 1:
                case.timers = {name: Timer() for name in case.timers}
            case.run_once()
    load = os.getloadavg()
    lines = [
        '# MPNet forward time (CPU, default config, 4096-point blocks)', '',
        f'torch {torch.__version__}, {args.threads} intra-op thread(s), {os.cpu_count()} CPUs '
        f'({platform.processor() or platform.machine()}), load average at the end {load[0]:.1f} / {load[1]:.1f}. '
        f'Best of {args.repeats} interleaved rounds after a warm-up round; `benchmarks/bench_model.py`. '
        'The machine is shared: CPU time (one thread) is the steadier figure, wall time shows the contention.', '',
    ]
    for kind, title in (('cpu', 'process CPU time'), ('wall', 'wall-clock time')):
        lines += [f'## {title}', '',
                  '| model | batch | FPS (s) | network (s) | total (s) | FPS share | per block (ms) '
                  '| memory reads (s) | total vs baseline |',
                  '|---|---|---|---|---|---|---|---|---|']
        for (name, batch), case in cases.items():
            r = case.figures(kind)
            base = cases[('baseline (no memory)', batch)].figures(kind)
            lines.append(f'| {name} | {batch} | {r["fps"]:.3f} | {r["network"]:.3f} | {r["total"]:.3f} '
                         f'| {r["fps"] / r["total"]:.0%} | {1000 * r["total"] / batch:.0f} '
                         f'| {r["memory"]:.3f} | {r["total"] / base["total"]:.2f}x |')
        lines.append('')
    lines += ['FPS = `MPNet.sample_indices` (sequential farthest point sampling for all 4 SA levels, '
              'torch, vectorised over the batch); network = `MPNet.forward(points, sample_indices)`; memory reads '
              '= eq. 2 on M (1950 slots) and on C (13 rows) for random (B,4096,128) queries, included in network.', '']
    text = '\n'.join(lines)
    print(text)
    atomic_write_text(RESULTS, text)
    print(f'written to {RESULTS}')


if __name__ == '__main__':
    main()
