"""GPU half-precision check (issue 13), for a session with a CUDA GPU; < 5 min on an H200. Not runnable on a CPU.

1. Inference: the shipped model through the torch backend on CUDA in fp32, fp16 (and bf16 where supported), on
   blocks cut from the first Ouster frame (within 15 m) and on that frame through SceneSegmenter: finite outputs,
   semantic argmax agreement with fp32, max embedding difference relative to max |embedding|, ms per frame.
2. Training: 20 AMP steps (fp16 + GradScaler, then bf16 where supported) and 20 fp32 steps of the paper config,
   batch 24, on blocks of two generated synthetic rooms: every loss finite, first / last loss, blocks/s, peak GiB.
   (Before the fix: fp16 inference NaN on every frame, AMP training `non-finite loss at step 0`.)

    python benchmarks/gpu_half_check.py [--out benchmarks/results/gpu_half.md]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpnet_model.config import ModelConfig  # noqa: E402
from mpnet_model.data.blocks import room_to_blocks  # noqa: E402
from mpnet_model.data.dataset import BlockDataset  # noqa: E402
from mpnet_model.data.room import Room  # noqa: E402
from mpnet_model.data.synthetic import generate_room  # noqa: E402
from mpnet_model.default_model import DEFAULT_CHECKPOINT  # noqa: E402
from mpnet_model.infer.backends.base import make_backend  # noqa: E402
from mpnet_model.infer.scene import SceneSegmenter, intensity_to_grey  # noqa: E402
from mpnet_model.io.atomic import atomic_write_text  # noqa: E402
from mpnet_model.train.config import config_from_dict  # noqa: E402
from mpnet_model.train.trainer import Trainer  # noqa: E402
from mpnet_ros.accumulate import range_mask  # noqa: E402
from mpnet_ros.bag_tool import read_bag_clouds  # noqa: E402

DATA = Path(os.environ.get('MPNET_SHARED_DATA', ROOT.parent / 'shared' / 'data'))


def inference(lines: list[str], precisions: list[str]) -> None:
    frame = next(read_bag_clouds(DATA / 'ouster_os1_128', '/ouster/points', limit=1))
    keep = range_mask(frame.xyz, 0.5, 15.0)            # the street scene within 15 m, as the tests use it
    xyz, grey = frame.xyz[keep], intensity_to_grey(frame.intensity[keep])
    backend = make_backend('torch', DEFAULT_CHECKPOINT, device='cuda')
    blocks = room_to_blocks(xyz, grey, num_points=backend.num_points, min_points=200,
                            rng=np.random.default_rng(0)).points
    reference = backend.run(blocks)
    scene_reference = None
    lines += ['## Inference: shipped model, torch backend, CUDA', '',
              f'{len(blocks)} blocks of the first Ouster frame within 15 m ({len(xyz)} points).', '',
              '| precision | blocks finite | argmax agreement | max emb diff / max abs emb | frame ms (SceneSegmenter) '
              '| frame labels equal to fp32 |', '|---|---|---|---|---|---|']
    for precision in precisions:
        logits, embeddings = make_backend('torch', DEFAULT_CHECKPOINT, device='cuda', precision=precision).run(blocks)
        finite = bool(np.isfinite(logits).all() and np.isfinite(embeddings).all())
        agree = float((logits.argmax(-1) == reference[0].argmax(-1)).mean())
        embed = float(np.nanmax(np.abs(embeddings - reference[1])) / np.abs(reference[1]).max())
        segmenter = SceneSegmenter.from_config('torch', DEFAULT_CHECKPOINT, device='cuda', precision=precision)
        segmenter.segment(xyz, intensity=frame.intensity[keep])                     # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = segmenter.segment(xyz, intensity=frame.intensity[keep])
        frame_ms = (time.perf_counter() - start) * 1e3
        scene_reference = result.labels if scene_reference is None else scene_reference
        same = float((result.labels == scene_reference).mean())
        lines.append(f'| {precision} | {finite} | {agree * 100:.2f} % | {embed * 100:.2f} % | {frame_ms:.0f} | '
                     f'{same * 100:.2f} % |')
        print(lines[-1], flush=True)
    lines.append('')


def training(lines: list[str], amp_dtypes: list[str], steps: int = 20, batch: int = 24) -> None:
    rng = np.random.default_rng(0)
    rooms = []
    for index in range(2):
        xyz, rgb, sem, ins, _ = generate_room(rng)
        rooms.append(Room(f'room_{index}', xyz, rgb.astype(np.float32) / 255.0, sem, ins,
                          ModelConfig().class_names))
    dataset = BlockDataset(rooms, num_points=4096, progress=False)
    items = [dataset[i % len(dataset)] for i in range(batch)]
    points, sem, ins = (torch.stack(part) for part in zip(*items))
    lines += ['## Training: paper config, batch 24, synthetic blocks, CUDA', '',
              '| run | all losses finite | loss step 1 | loss step 20 | blocks/s | peak GiB |',
              '|---|---|---|---|---|---|']
    for label, run in [('fp32', {'amp': False})] + [(f'AMP {d}', {'amp': True, 'amp_dtype': d}) for d in amp_dtypes]:
        folder = tempfile.mkdtemp(prefix='mpnet-gpu-half-')
        cfg = config_from_dict({'optim': {'batch_size': batch}, 'run': {'device': 'cuda', 'num_workers': 0,
                                'resume': False, 'log_every': 10_000, 'out_dir': folder, **run}})
        trainer = Trainer(cfg, dataset)
        torch.cuda.reset_peak_memory_stats()
        losses, start, error = [], None, ''
        try:
            for step in range(steps):
                if step == 1:
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                losses.append(trainer.train_step(points, sem, ins)['total'])
            torch.cuda.synchronize()
            rate = batch * (steps - 1) / (time.perf_counter() - start)
        except FloatingPointError as failure:
            error, rate = str(failure)[:80], float('nan')
        trainer.close()
        peak = torch.cuda.max_memory_allocated() / 2**30
        finite = bool(losses) and not error and bool(np.isfinite(losses).all())
        last = f'{losses[-1]:.2f}' if losses and not error else error or '–'
        lines.append(f'| {label} | {finite} | {losses[0] if losses else float("nan"):.2f} | {last} | {rate:.0f} | '
                     f'{peak:.1f} |')
        print(lines[-1], flush=True)
    lines.append('')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results' / 'gpu_half.md')
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print('gpu_half_check: needs a CUDA GPU (none found); nothing run', file=sys.stderr)
        return 2
    bf16 = torch.cuda.is_bf16_supported()
    lines = ['# GPU half-precision check (benchmarks/gpu_half_check.py)', '',
             f'GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 supported: {bf16}.', '']
    inference(lines, ['fp32', 'fp16'] + (['bf16'] if bf16 else []))
    training(lines, ['fp16'] + (['bf16'] if bf16 else []))
    atomic_write_text(args.out, '\n'.join(lines))
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
