"""Precision benchmark on the CPU: speed and agreement of fp16 / bf16 against fp32, measured in the same run.

Rows: torch backend (autocast) on the shipped model (small config, trained) and on a paper-config model (random
weights, heads scaled to a trained model's output range); ONNX Runtime fp32 graph vs its fp16 conversion; one AMP
training step (small config). Agreement: semantic argmax equal to fp32, max |embedding difference| relative to
max |embedding|. Blocks: office scan (rgb) and one Ouster frame (intensity grey). Writes
benchmarks/results/precision.md.

    python benchmarks/bench_precision.py [--threads 2] [--repeats 3] [--skip-paper-fp16]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpnet_model.config import ModelConfig, small_config  # noqa: E402
from mpnet_model.data.blocks import room_to_blocks  # noqa: E402
from mpnet_model.default_model import DEFAULT_CHECKPOINT  # noqa: E402
from mpnet_model.infer.backends.base import make_backend  # noqa: E402
from mpnet_model.infer.export import export_checkpoint  # noqa: E402
from mpnet_model.infer.scene import intensity_to_grey  # noqa: E402
from mpnet_model.io.atomic import atomic_write_text  # noqa: E402
from mpnet_model.io.pointclouds import load_pcd, optical_to_z_up  # noqa: E402
from mpnet_model.model.checkpoint import save_checkpoint  # noqa: E402
from mpnet_model.model.mpnet import random_model  # noqa: E402
from mpnet_ros.accumulate import range_mask  # noqa: E402
from mpnet_ros.bag_tool import read_bag_clouds  # noqa: E402

DATA = Path(os.environ.get('MPNET_SHARED_DATA', '/work/shared/data'))


def real_blocks(num_points: int, count: int) -> np.ndarray:
    """`count` office blocks (rgb) and `count` Ouster blocks (intensity grey): (2*count, P, 9)."""
    office = load_pcd(DATA / 'pcl_office1.pcd')
    frame = next(read_bag_clouds(DATA / 'ouster_os1_128', '/ouster/points', limit=1))
    keep = range_mask(frame.xyz, 0.0, 15.0)
    rng = np.random.default_rng(0)
    sets = [room_to_blocks(optical_to_z_up(office.xyz), office.rgb, num_points=num_points, rng=rng).points,
            room_to_blocks(frame.xyz[keep], intensity_to_grey(frame.intensity[keep]), num_points=num_points,
                           min_points=200, rng=rng).points]
    return np.concatenate([blocks[np.linspace(0, len(blocks) - 1, count).astype(int)] for blocks in sets])


def timed(function, repeats: int) -> float:
    """Median seconds of function() over `repeats` runs after one warm-up."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def agreement(outputs, reference) -> tuple[float, float]:
    logits, embeddings = outputs
    agree = float((logits.argmax(-1) == reference[0].argmax(-1)).mean())
    return agree, float(np.abs(embeddings - reference[1]).max() / np.abs(reference[1]).max())


def paper_checkpoint(folder: Path) -> Path:
    model = random_model(ModelConfig(), head_scale=60.0)
    return save_checkpoint(folder / 'paper.pt', model, model.cfg)


def bench_torch(name: str, checkpoint: Path, blocks: np.ndarray, precisions, repeats: int, threads: int) -> list:
    rows, reference, base = [], None, None
    for precision in tqdm(precisions, desc=f'torch {name}', leave=False):
        backend = make_backend('torch', checkpoint, precision=precision, num_threads=threads)
        outputs = backend.run(blocks)
        seconds = timed(partial(backend.run, blocks), repeats if precision != 'fp16' or name != 'paper' else 1)
        if reference is None:
            reference, base = outputs, seconds
        agree, embed = agreement(outputs, reference)
        finite = bool(np.isfinite(outputs[0]).all() and np.isfinite(outputs[1]).all())
        rows.append((f'torch {name}', precision, len(blocks), seconds * 1e3 / len(blocks), base / seconds,
                     finite, agree, embed))
        print(f'  torch {name} {precision}: {seconds * 1e3 / len(blocks):.0f} ms/block, x{base / seconds:.2f} vs fp32, '
              f'finite {finite}, agree {agree:.4f}, emb {embed:.4f}', flush=True)
    return rows


def bench_onnx(onnx_path: Path, blocks: np.ndarray, repeats: int, threads: int) -> list:
    rows, reference, base = [], None, None
    for precision in ('fp32', 'fp16'):
        start = time.perf_counter()
        backend = make_backend('onnxruntime', onnx_path, precision=precision, intra_op_threads=threads)
        setup = time.perf_counter() - start
        outputs = backend.run(blocks)
        seconds = timed(partial(backend.run, blocks), repeats)
        if reference is None:
            reference, base = outputs, seconds
        agree, embed = agreement(outputs, reference)
        finite = bool(np.isfinite(outputs[0]).all() and np.isfinite(outputs[1]).all())
        rows.append(('onnxruntime shipped', precision, len(blocks), seconds * 1e3 / len(blocks), base / seconds,
                     finite, agree, embed))
        print(f'  ORT {precision}: {seconds * 1e3 / len(blocks):.0f} ms/block (session + conversion {setup:.1f} s), '
              f'x{base / seconds:.2f}, agree {agree:.4f}, emb {embed:.4f}', flush=True)
    return rows


def bench_training(folder: Path, repeats: int) -> list:
    from mpnet_model.train.config import config_from_dict
    from mpnet_model.train.trainer import Trainer

    cfg_model = small_config().to_dict()
    rng = np.random.default_rng(0)
    points = torch.from_numpy(real_blocks(cfg_model['num_points'], 2))
    sem = torch.from_numpy(rng.integers(0, 13, points.shape[:2]))
    ins = torch.from_numpy(rng.integers(0, 6, points.shape[:2]))
    rows, base = [], None
    for label, run in (('fp32', {}), ('fp16', {'amp_cpu': True, 'amp_dtype': 'fp16'}),
                       ('bf16', {'amp_cpu': True, 'amp_dtype': 'bf16'})):
        cfg = config_from_dict({'model': cfg_model, 'optim': {'batch_size': 4},
                                'run': {'device': 'cpu', 'num_workers': 0, 'resume': False, 'log_every': 10_000,
                                        'out_dir': str(folder / f'train-{label}'), **run}})
        trainer = Trainer(cfg, torch.utils.data.TensorDataset(points, sem, ins))
        losses = []

        def step(trainer=trainer, losses=losses):
            losses.append(trainer.train_step(points, sem, ins)['total'])

        seconds = timed(step, repeats)
        trainer.close()
        base = base or seconds
        rows.append(('train step small, batch 4', label, len(points), seconds * 1e3, base / seconds,
                     bool(np.isfinite(losses).all()), float('nan'), float('nan')))
        print(f'  train step {label}: {seconds * 1e3:.0f} ms, x{base / seconds:.2f}', flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--skip-paper-fp16', action='store_true', help='fp16 of the paper config takes minutes')
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results' / 'precision.md')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix='mpnet-bench-precision-'))
    small_blocks = real_blocks(1024, 4)
    rows = bench_torch('shipped (small)', DEFAULT_CHECKPOINT, small_blocks, ('fp32', 'fp16', 'bf16'), args.repeats,
                       args.threads)
    paper_precisions = ('fp32', 'bf16') if args.skip_paper_fp16 else ('fp32', 'bf16', 'fp16')
    rows += bench_torch('paper', paper_checkpoint(folder), real_blocks(4096, 1), paper_precisions, args.repeats,
                        args.threads)
    rows += bench_onnx(export_checkpoint(DEFAULT_CHECKPOINT, folder / 'shipped.onnx'), small_blocks, args.repeats,
                       args.threads)
    rows += bench_training(folder, args.repeats)
    cpu_flags = open('/proc/cpuinfo').read() if Path('/proc/cpuinfo').is_file() else ''
    units = [flag for flag in ('avx512_bf16', 'amx_bf16', 'avx512_fp16', 'f16c') if f' {flag}' in cpu_flags]
    lines = ['# Precision benchmark (CPU)', '',
             f'Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs (absolute times are '
             f'noisy; ratios are against fp32 in the same run), {args.threads} threads, CPU half-precision units: '
             f'{", ".join(units) or "none"}; torch {torch.__version__}. Median of {args.repeats} runs after a warm-up '
             '(paper-config fp16: one run). `python benchmarks/bench_precision.py`.', '',
             '| what | precision | blocks | ms per block (train: per step) | speed vs fp32 | finite | argmax '
             'agreement | max emb diff / max abs emb |', '|---|---|---|---|---|---|---|---|']
    for what, precision, blocks, ms, ratio, finite, agree, embed in rows:
        agree_text = '–' if np.isnan(agree) else f'{agree * 100:.2f} %'
        embed_text = '–' if np.isnan(embed) else f'{embed * 100:.2f} %'
        lines.append(f'| {what} | {precision} | {blocks} | {ms:.0f} | x{ratio:.2f} | {finite} | {agree_text} | '
                     f'{embed_text} |')
    atomic_write_text(args.out, '\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
