"""GPU half-precision check (issue 13), for a session with a CUDA GPU; < 5 min on an H200. Not runnable on a CPU.

1. Inference: the shipped model through the torch backend on CUDA in fp32, fp16 (and bf16 where supported), on
   blocks cut from the first Ouster frame (within 15 m) and on that frame through SceneSegmenter: finite outputs,
   semantic argmax agreement with fp32, max embedding difference relative to max |embedding|, ms per frame.
2. Training: 20 AMP steps (fp16 + GradScaler, then bf16 where supported) and 20 fp32 steps of the paper config,
   batch 24, on blocks of two generated synthetic rooms: every loss finite, first / last loss, blocks/s, peak GiB.
   (Before the fix: fp16 inference NaN on every frame, AMP training `non-finite loss at step 0`.)

    python benchmarks/gpu_half_check.py [--out benchmarks/results/gpu_half.md]
    python benchmarks/gpu_half_check.py --device cpu --steps 2 --batch 2 --out /tmp/x.md   (dry run of the script)

The Ouster frame comes from the shared bag or the frames .npz of a GPU session (benchmarks/sample_frames.py).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sample_frames import ouster_crop  # noqa: E402
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


def sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def inference(lines: list[str], precisions: list[str], device: str = 'cuda') -> None:
    xyz, intensity = ouster_crop(0, 15.0, near=0.5)    # the street scene within 15 m, as the tests use it
    grey = intensity_to_grey(intensity)
    backend = make_backend('torch', DEFAULT_CHECKPOINT, device=device)
    blocks = room_to_blocks(xyz, grey, num_points=backend.num_points, min_points=200,
                            rng=np.random.default_rng(0)).points
    reference = backend.run(blocks)
    scene_reference = None
    lines += [f'## Inference: shipped model, torch backend, {device}', '',
              f'{len(blocks)} blocks of the first Ouster frame within 15 m ({len(xyz)} points).', '',
              '| precision | blocks finite | argmax agreement | max emb diff / max abs emb | frame ms (SceneSegmenter) '
              '| frame labels equal to fp32 |', '|---|---|---|---|---|---|']
    for precision in precisions:
        logits, embeddings = make_backend('torch', DEFAULT_CHECKPOINT, device=device, precision=precision).run(blocks)
        finite = bool(np.isfinite(logits).all() and np.isfinite(embeddings).all())
        agree = float((logits.argmax(-1) == reference[0].argmax(-1)).mean())
        embed = float(np.nanmax(np.abs(embeddings - reference[1])) / np.abs(reference[1]).max())
        segmenter = SceneSegmenter.from_config('torch', DEFAULT_CHECKPOINT, device=device, precision=precision)
        segmenter.segment(xyz, intensity=intensity)                                 # warm-up
        sync(device)
        start = time.perf_counter()
        result = segmenter.segment(xyz, intensity=intensity)
        sync(device)
        frame_ms = (time.perf_counter() - start) * 1e3
        scene_reference = result.labels if scene_reference is None else scene_reference
        same = float((result.labels == scene_reference).mean())
        lines.append(f'| {precision} | {finite} | {agree * 100:.2f} % | {embed * 100:.2f} % | {frame_ms:.0f} | '
                     f'{same * 100:.2f} % |')
        print(lines[-1], flush=True)
    lines.append('')


def training(lines: list[str], amp_dtypes: list[str], steps: int = 20, batch: int = 24, device: str = 'cuda') -> None:
    rng = np.random.default_rng(0)
    rooms = []
    for index in range(2):
        xyz, rgb, sem, ins, _ = generate_room(rng)
        rooms.append(Room(f'room_{index}', xyz, rgb.astype(np.float32) / 255.0, sem, ins,
                          ModelConfig().class_names))
    dataset = BlockDataset(rooms, num_points=4096, progress=False)
    items = [dataset[i % len(dataset)] for i in range(batch)]
    points, sem, ins = (torch.stack(part) for part in zip(*items))
    lines += [f'## Training: paper config, batch {batch}, synthetic blocks, {device}', '',
              f'| run | all losses finite | loss step 1 | loss step {steps} | blocks/s | peak GiB |',
              '|---|---|---|---|---|---|']
    for label, run in [('fp32', {'amp': False})] + [(f'AMP {d}', {'amp': True, 'amp_dtype': d}) for d in amp_dtypes]:
        folder = tempfile.mkdtemp(prefix='mpnet-gpu-half-')
        cfg = config_from_dict({'optim': {'batch_size': batch}, 'run': {'device': device, 'num_workers': 0,
                                'resume': False, 'log_every': 10_000, 'out_dir': folder, **run}})
        trainer = Trainer(cfg, dataset)
        if device.startswith('cuda'):
            torch.cuda.reset_peak_memory_stats()
        losses, start, error = [], None, ''
        try:
            for step in range(steps):
                if step == 1:
                    sync(device)
                    start = time.perf_counter()
                losses.append(trainer.train_step(points, sem, ins)['total'])
            sync(device)
            rate = batch * (steps - 1) / (time.perf_counter() - start)
        except FloatingPointError as failure:
            error, rate = str(failure)[:80], float('nan')
        trainer.close()
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith('cuda') else float('nan')
        finite = bool(losses) and not error and bool(np.isfinite(losses).all())
        last = f'{losses[-1]:.2f}' if losses and not error else error or '–'
        lines.append(f'| {label} | {finite} | {losses[0] if losses else float("nan"):.2f} | {last} | {rate:.0f} | '
                     f'{peak:.1f} |')
        print(lines[-1], flush=True)
    lines.append('')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results' / 'gpu_half.md')
    parser.add_argument('--device', default='cuda', help="'cpu': a dry run of this script (fp32 only)")
    parser.add_argument('--steps', type=int, default=20, help='training steps per run (>= 2)')
    parser.add_argument('--batch', type=int, default=24, help='training batch (blocks)')
    args = parser.parse_args(argv)
    cuda = args.device.startswith('cuda')
    if cuda and not torch.cuda.is_available():
        print('gpu_half_check: needs a CUDA GPU (none found); nothing run', file=sys.stderr)
        return 2
    bf16 = cuda and torch.cuda.is_bf16_supported()
    name = torch.cuda.get_device_name() if cuda else 'CPU (dry run, fp32 only)'
    lines = ['# GPU half-precision check (benchmarks/gpu_half_check.py)', '',
             f'GPU: {name}, torch {torch.__version__}, bf16 supported: {bf16}.', '']
    halves = (['fp16'] + (['bf16'] if bf16 else [])) if cuda else []
    inference(lines, ['fp32'] + halves, args.device)
    training(lines, halves, max(args.steps, 2), args.batch, args.device)
    atomic_write_text(args.out, '\n'.join(lines))
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
