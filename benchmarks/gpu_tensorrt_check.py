"""GPU check of the TensorRT backend, for anyone with an NVIDIA GPU and TensorRT 10 / 11 (a few minutes):

  1. export the shipped model (or --checkpoint) to ONNX with the current exporter (fp32-node marks included);
  2. build an fp32 and an fp16 engine (timed; cached under --workdir, so a rerun measures the cache hit);
  3. run both on real blocks (the shared office scan, from MPNET_SHARED_DATA or a GPU session's frames .npz, else a
     generated room) and compare with ONNX Runtime fp32 on the CPU: finite outputs, semantic argmax agreement
     (fp16 must reach 99 %), largest logit / embedding differences;
  4. latency per batch (1, 8, 16) of TensorRT fp32 / fp16 and of the torch CUDA backend (fp32), with ratios to
     torch measured in the same run.

Writes benchmarks/results/tensorrt_gpu.md and exits 0 when every check passes, 1 when one fails, 2 when TensorRT,
CUDA or the data cannot be had (the message says what to install).

    python benchmarks/gpu_tensorrt_check.py [--device cuda:0] [--checkpoint model.pt] [--repeats 20]
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / 'benchmarks' / 'results' / 'tensorrt_gpu.md'
FP16_MIN_AGREEMENT = 0.99


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog='gpu_tensorrt_check', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--device', default='cuda', help="'cuda' or 'cuda:N'")
    parser.add_argument('--checkpoint', type=Path, help='checkpoint to export (default: the shipped model)')
    parser.add_argument('--workdir', type=Path, help='ONNX + engine cache folder (default: a temporary folder)')
    parser.add_argument('--blocks', type=int, default=32, help='blocks compared for agreement')
    parser.add_argument('--repeats', type=int, default=20, help='timed runs per latency figure (median)')
    parser.add_argument('--out', type=Path, default=RESULTS, help='results markdown')
    return parser.parse_args(argv)


def fail(message: str, code: int = 2) -> int:
    print(f'gpu_tensorrt_check: {message}', file=sys.stderr)
    return code


def blocks_for(num_points: int, count: int):
    """(count, P, 9) float32 blocks: the PCL office scan if present, else a generated room; and where from."""
    import numpy as np

    from benchmarks import sample_frames
    from mpnet_model.data.blocks import room_to_blocks

    try:
        xyz, rgb = sample_frames.office_scan()
        source = 'real: pcl_office1.pcd'
    except (FileNotFoundError, KeyError):
        from mpnet_model.data.synthetic import generate_room

        xyz, rgb, *_ = generate_room(np.random.default_rng(0))
        source = 'generated room (shared data not found)'
    blocks = room_to_blocks(xyz, rgb, num_points=num_points, rng=np.random.default_rng(0)).points
    pick = np.linspace(0, len(blocks) - 1, min(count, len(blocks))).astype(int)
    return np.ascontiguousarray(blocks[pick], dtype=np.float32), source


def median_ms(function, argument, repeats: int) -> float:
    import numpy as np

    function(argument)                                   # warm-up (and lazy allocations)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(argument)                               # run() returns host arrays: synchronised
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.median(samples))


def compare(name: str, result, reference) -> dict:
    import numpy as np

    sem, emb = result
    ref_sem, ref_emb = reference
    finite = bool(np.isfinite(sem).all() and np.isfinite(emb).all())
    return {'name': name, 'finite': finite,
            'agreement': float((sem.argmax(-1) == ref_sem.argmax(-1)).mean()),
            'logit_diff': float(np.abs(sem - ref_sem).max()) if finite else float('nan'),
            'embed_diff': float(np.abs(emb - ref_emb).max()) if finite else float('nan'),
            'logit_scale': float(np.abs(ref_sem).max())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import tensorrt
    except ImportError:
        from mpnet_model.infer.backends.tensorrt_backend import INSTALL_ROUTES
        return fail(f'TensorRT is not installed (needs TensorRT 10 or 11: {INSTALL_ROUTES})')
    import numpy as np
    import torch

    from mpnet_model.default_model import DEFAULT_CHECKPOINT
    from mpnet_model.infer.backends.base import BackendError, make_backend
    from mpnet_model.infer.backends.tensorrt_backend import (
        TensorRTUnavailable,
        check_tensorrt_version,
        fp16_build_mode,
    )
    from mpnet_model.infer.export import export_checkpoint
    from mpnet_model.io.atomic import atomic_write_text

    try:
        api = check_tensorrt_version(tensorrt.__version__)
    except TensorRTUnavailable as error:
        return fail(str(error))
    if not torch.cuda.is_available():
        return fail('no CUDA device visible to torch')
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix='mpnet-trt-check-'))
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    onnx_path = export_checkpoint(checkpoint, workdir / 'model.onnx')
    reference_backend = make_backend('onnxruntime', onnx_path)
    blocks, source = blocks_for(reference_backend.num_points, args.blocks)
    reference = reference_backend.run(blocks)
    device_name = torch.cuda.get_device_name(torch.device(args.device))
    lines = [f'# TensorRT GPU check ({time.strftime("%Y-%m-%d")})', '',
             f'GPU {device_name}, TensorRT {tensorrt.__version__} (fp16 build: {fp16_build_mode(api)}), '
             f'torch {torch.__version__}, '
             f'{platform.machine()}; model {checkpoint.name} ({reference_backend.num_points} points/block); '
             f'{len(blocks)} blocks, {source}. Reference: ONNX Runtime fp32 on the CPU.', '']
    backends, rows = {}, []
    for precision in ('fp32', 'fp16'):
        start = time.perf_counter()
        try:
            backend = make_backend('tensorrt', onnx_path, device=args.device, precision=precision,
                                   cache_dir=workdir / 'engines')
        except BackendError as error:
            return fail(f'{precision} engine: {error}', 1)
        seconds = time.perf_counter() - start
        backends[precision] = backend
        row = compare(f'TensorRT {precision}', backend.run(blocks), reference)
        row['build'] = f'{seconds:.1f} s ({backend.engine_path.name})'
        rows.append(row)
    torch_backend = make_backend('torch', checkpoint, device=args.device, fps='torch')
    torch_half = make_backend('torch', checkpoint, device=args.device, precision='fp16', fps='torch')
    rows.append({**compare('torch CUDA fp32', torch_backend.run(blocks), reference), 'build': '-'})
    rows.append({**compare('torch CUDA fp16 (autocast)', torch_half.run(blocks), reference), 'build': '-'})
    lines += ['| runtime | finite | argmax agreement | max logit diff | max embedding diff | engine load/build |',
              '|---|---|---|---|---|---|']
    for row in rows:
        lines.append(f"| {row['name']} | {row['finite']} | {row['agreement']:.4f} | {row['logit_diff']:.3g} "
                     f"(of {row['logit_scale']:.3g}) | {row['embed_diff']:.3g} | {row['build']} |")
    fp32_row, fp16_row = rows[0], rows[1]
    checks = [('TensorRT fp32 finite, argmax agreement >= 0.999',
               fp32_row['finite'] and fp32_row['agreement'] >= 0.999),
              (f'TensorRT fp16 finite, argmax agreement >= {FP16_MIN_AGREEMENT}',
               fp16_row['finite'] and fp16_row['agreement'] >= FP16_MIN_AGREEMENT)]
    lines += ['', '| check | result |', '|---|---|'] + [f'| {name} | {"PASS" if good else "FAIL"} |'
                                                         for name, good in checks]
    ok = all(good for _, good in checks)
    lines += ['', '| batch | torch CUDA fp32 ms | torch fp16 ms (x torch) | TensorRT fp32 ms (x torch) | '
              'TensorRT fp16 ms (x torch) |', '|---|---|---|---|---|']
    for batch in (1, 8, 16):
        data = np.ascontiguousarray(np.resize(blocks, (batch, *blocks.shape[1:])))
        base = median_ms(torch_backend.run, data, args.repeats)
        others = [median_ms(backend.run, data, args.repeats)
                  for backend in (torch_half, backends['fp32'], backends['fp16'])]
        lines.append(f'| {batch} | {base:.2f} | ' + ' | '.join(f'{ms:.2f} ({ms / base:.2f})' for ms in others) + ' |')
    lines += ['', 'Latency: `Backend.run` per call (host blocks in, host arrays out; FPS on the GPU included), '
              f'median of {args.repeats} after a warm-up; ratios < 1 are faster than torch in the same run.', '']
    text = '\n'.join(lines)
    print(text)
    atomic_write_text(args.out, text)
    print(f'wrote {args.out}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
