"""GPU check of the frame path (issue 12), prepared for a session with a CUDA device; runs in < 5 min on an H100/H200.

    PYTHONPATH=. .venv/bin/python benchmarks/gpu_frame.py [--repeats 3]
    python benchmarks/gpu_frame.py --device cpu --range 4 --scans 1 --repeats 1 --skip-tests --out /tmp/f.md  (dry run)

1. the CUDA tests of the frame path (tests/test_frame.py, tests/test_fps.py: CUDA graph FPS = eager FPS, the
   stages on CUDA answer as on the CPU given the same blocks, the whole path end to end);
2. per-frame latency of the new default path, torch backend on CUDA, fp32, on the 15 m crop of each shared Ouster
   scan: the shipped model (target p50 <= 100 ms) and the paper config with random weights (target p50 <= 250 ms;
   latency does not depend on the weights), with the stage table and where the time goes;
3. today's path (the reference) once on the first scan with the shipped model on CUDA, for the ratio.

Writes benchmarks/results/frame_gpu.md. The cloud crosses host -> device once and the answers device -> host once
per frame (SceneSegmenter.segment); stage times are CUDA-event times (no sync per stage), the wall time is taken
after a device synchronisation. Every crop is segmented once before the timing (`warm_up`).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'benchmarks'))

from bench_frame import STAGES, ouster_crops  # noqa: E402

from mpnet_model.io.atomic import atomic_write_text  # noqa: E402


def paper_checkpoint(folder: Path) -> Path:
    from mpnet_model.config import ModelConfig
    from mpnet_model.model.checkpoint import save_checkpoint
    from mpnet_model.model.mpnet import MPNet

    torch.manual_seed(0)
    cfg = ModelConfig()                              # the paper's architecture, S3DIS classes
    return save_checkpoint(folder / 'paper.pt', MPNet(cfg).eval(), cfg)


def sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def warm_up(segmenter, crops) -> None:
    """Every crop the run times, before the timing (the first twice): each frame size has its own FPS CUDA-graph
    batch shapes, mean-shift chunks and cuDNN plans; captured inside a timed frame they would be timed too."""
    for index, (xyz, intensity) in enumerate(crops):
        for _ in range(2 if index == 0 else 1):
            segmenter.segment(xyz, None, intensity)


def time_frames(segmenter, crops, repeats: int) -> tuple[list[dict], list[int]]:
    warm_up(segmenter, crops)                                            # graphs, allocator, cuDNN
    timings, blocks = [], []
    device = segmenter.backend.device
    for _ in range(repeats):
        for xyz, intensity in crops:
            sync(device)
            start = time.perf_counter()
            result = segmenter.segment(xyz, None, intensity)
            sync(device)
            result.timings['wall'] = (time.perf_counter() - start) * 1e3
            timings.append(result.timings)
            blocks.append(result.num_blocks)
    return timings, blocks


def row(name: str, timings: list[dict], blocks: list[int], target: str) -> str:
    cells = ' | '.join(f'{np.median([t.get(s, 0.0) for t in timings]):.1f}' for s in STAGES)
    return (f'| {name} | {cells} | {np.percentile([t["wall"] for t in timings], 50):.1f} | '
            f'{np.percentile([t["wall"] for t in timings], 95):.1f} | {np.median(blocks):.0f} | {target} |')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--skip-tests', action='store_true')
    parser.add_argument('--device', default='cuda', help="'cpu' with a small --range: a dry run of this script")
    parser.add_argument('--range', type=float, default=15.0, help='crop radius [m]')
    parser.add_argument('--scans', type=int, default=0, help='the first N Ouster scans only (0: all three)')
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results' / 'frame_gpu.md',
                        help='results markdown (written on CUDA, or whenever --out is given)')
    args = parser.parse_args(argv)
    out_given = any(a == '--out' or a.startswith('--out=') for a in (sys.argv[1:] if argv is None else argv))
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        print('gpu_frame: no CUDA device here; nothing to measure')
        return 1
    name = torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU (dry run)'
    lines = ['# Frame path on the GPU (issue 12)', '', f'Device: {name}, torch {torch.__version__}, CUDA '
             f'{torch.version.cuda}. Torch backend, fp32, new default layout; {args.range:.0f} m crops.', '']
    if not args.skip_tests:
        tests = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-k', 'cuda',
                                'tests/test_frame.py', 'tests/test_fps.py'], cwd=ROOT, capture_output=True, text=True)
        summary = tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else tests.stderr[-500:]
        print(tests.stdout[-3000:])
        lines += [f'CUDA tests (tests/test_frame.py, tests/test_fps.py -k cuda): {summary}', '']
    from mpnet_model.infer.reference import segment_reference
    from mpnet_model.infer.scene import SceneSegmenter

    crops = ouster_crops(args.range)[:args.scans or None]
    lines += ['| model | ' + ' | '.join(f'{s} ms' for s in STAGES) + ' | p50 wall ms | p95 wall ms | blocks | '
              'target |', '|---' * (len(STAGES) + 5) + '|']
    with tempfile.TemporaryDirectory() as folder:
        models = [('shipped (1024 pts, D 64)', '', 'p50 <= 100 ms'),
                  ('paper config (4096 pts, D 128)', str(paper_checkpoint(Path(folder))), 'p50 <= 250 ms')]
        for name, path, target in models:
            segmenter = SceneSegmenter.from_config('torch', path, device=args.device)
            timings, blocks = time_frames(segmenter, crops, args.repeats)
            lines.append(row(name, timings, blocks, target))
            print(lines[-1], flush=True)
            del segmenter
            if args.device.startswith('cuda'):
                torch.cuda.empty_cache()
    shipped = SceneSegmenter.from_config('torch', '', device=args.device)
    xyz, intensity = crops[0]
    start = time.perf_counter()
    old = segment_reference(shipped, xyz, None, intensity)
    reference_s = time.perf_counter() - start
    lines += ['', f'Today\'s path (reference: per-block sampling, batch 8, per-block mean shift, block-loop merging) '
              f'on scan 0, shipped model, {args.device}: {reference_s:.1f} s '
              f'({", ".join(f"{k} {v:.0f}" for k, v in old.timings.items())} ms).']
    report = '\n'.join(lines) + '\n'
    print(report)
    if args.device.startswith('cuda') or out_given:
        atomic_write_text(args.out, report)
        print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
