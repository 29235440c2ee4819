"""Runtime benchmark: torch eager vs ONNX Runtime per block (batch 1 and 8), FPS inside vs outside the ONNX graph,
and whole-scene time on one shared Ouster frame (cropped) and the PCL office scan. Random-initialised weights
(latency does not depend on training). Writes benchmarks/results/runtime.md.

    python benchmarks/bench_runtime.py [--quick] [--threads 2] [--default-config]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpnet_model.config import ModelConfig, small_config  # noqa: E402
from mpnet_model.data.blocks import room_to_blocks  # noqa: E402
from mpnet_model.infer.backends.base import make_backend  # noqa: E402
from mpnet_model.infer.export import export_checkpoint  # noqa: E402
from mpnet_model.infer.scene import SceneSegmenter  # noqa: E402
from mpnet_model.io.atomic import atomic_write_text  # noqa: E402
from mpnet_model.io.pointclouds import load_pcd, optical_to_z_up  # noqa: E402
from mpnet_model.model.checkpoint import save_checkpoint  # noqa: E402
from mpnet_model.model.mpnet import MPNet  # noqa: E402
from mpnet_ros.accumulate import range_mask  # noqa: E402
from mpnet_ros.bag_tool import read_bag_clouds  # noqa: E402

DATA = Path(os.environ.get('MPNET_SHARED_DATA', '/work/shared/data'))


def timed(function, argument, repeats: int) -> float:
    """Median wall time in ms of function(argument) over `repeats` runs after one warm-up."""
    function(argument)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(argument)
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.median(samples))


def real_blocks(num_points: int, count: int) -> np.ndarray:
    frame = load_pcd(DATA / 'pcl_office1.pcd')
    blocks = room_to_blocks(optical_to_z_up(frame.xyz), frame.rgb, num_points=num_points).points
    return blocks[np.linspace(0, len(blocks) - 1, count).astype(int)]


def write_model(folder: Path, cfg: ModelConfig, name: str) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(folder / f'{name}.pt', MPNet(cfg).eval(), cfg)


def bench_blocks(checkpoint: Path, onnx_path: Path, cfg: ModelConfig, batches, repeats: int, threads: int):
    rows = []
    torch_eager = make_backend('torch', checkpoint, fps='torch', num_threads=threads)
    torch_np_fps = make_backend('torch', checkpoint, fps='numpy', num_threads=threads)
    ort = make_backend('onnxruntime', onnx_path, intra_op_threads=threads)
    for batch in batches:
        blocks = real_blocks(cfg.num_points, batch)
        t_torch = timed(torch_eager.run, blocks, repeats)
        t_torch_np = timed(torch_np_fps.run, blocks, repeats)
        t_ort = timed(ort.run, blocks, repeats)
        rows.append((batch, t_torch / batch, t_torch_np / batch, t_ort / batch, t_torch / t_ort))
        print(f'  batch {batch}: torch {t_torch / batch:.1f} ms/block, torch+numpy FPS {t_torch_np / batch:.1f}, '
              f'ORT {t_ort / batch:.1f} -> ORT speed-up x{t_torch / t_ort:.2f}')
    return rows


def bench_fps_placement(folder: Path, checkpoint: Path, cfg: ModelConfig, repeats: int, threads: int):
    results = {}
    for inside in (False, True):
        start = time.perf_counter()
        path = export_checkpoint(checkpoint, folder / f'fps_{"in" if inside else "out"}.onnx', fps_in_graph=inside)
        export_s = time.perf_counter() - start
        nodes = len(onnx.load(str(path)).graph.node)
        backend = make_backend('onnxruntime', path, intra_op_threads=threads)
        blocks = real_blocks(cfg.num_points, 2)
        results[inside] = (export_s, nodes, path.stat().st_size / 1e6,
                           timed(backend.run, blocks, repeats) / 2)
        print(f'  FPS {"inside" if inside else "outside"}: export {export_s:.1f} s, {nodes} nodes, '
              f'{results[inside][3]:.1f} ms/block (batch 2)')
    return results


def bench_scenes(onnx_path: Path, threads: int):
    segmenter = SceneSegmenter(make_backend('onnxruntime', onnx_path, intra_op_threads=threads))
    scenes = []
    frame = next(read_bag_clouds(DATA / 'ouster_os1_128', limit=1))
    keep = range_mask(frame.xyz, 0.0, 15.0)
    office = load_pcd(DATA / 'pcl_office1.pcd')
    clouds = (('Ouster OS-1-128 frame, 15 m crop', frame.xyz[keep], None, frame.intensity[keep]),
              ('PCL office1 (Kinect)', optical_to_z_up(office.xyz), office.rgb, None))
    for name, xyz, rgb, intensity in clouds:
        start = time.perf_counter()
        result = segmenter.segment(xyz, rgb, intensity)
        total = (time.perf_counter() - start) * 1e3
        scenes.append((name, len(xyz), total, result.timings, len(result.instances_info)))
        stages = ', '.join(f'{k} {v:.0f}' for k, v in result.timings.items())
        print(f'  {name}: {len(xyz)} points, {total / 1e3:.1f} s ({stages}), {len(result.instances_info)} instances')
    return scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='fewer repeats')
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--default-config', action='store_true', help='also time the full ModelConfig at batch 1')
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    folder = Path(tempfile.mkdtemp(prefix='bench-runtime-'))
    torch.set_num_threads(args.threads)
    lines = ['# Runtime benchmark', '',
             f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other '
             f'jobs, so absolute figures are noisy), {args.threads} threads; torch {torch.__version__}, '
             f'onnxruntime {__import__("onnxruntime").__version__}. Random-initialised weights; median of '
             f'{repeats} runs. Blocks cut from the PCL office scan.', '']

    cfg = small_config()
    checkpoint = write_model(folder, cfg, 'small')
    onnx_path = export_checkpoint(checkpoint, folder / 'small.onnx')
    print('small config (1024 points/block): torch eager vs ONNX Runtime')
    rows = bench_blocks(checkpoint, onnx_path, cfg, (1, 8), repeats, args.threads)
    lines += ['## Per-block latency, small config (1024 points, the shipped CPU default)', '',
              '| batch | torch eager (own FPS) ms/block | torch + numpy FPS ms/block | ORT ms/block | ORT speed-up vs '
              'torch eager |', '|---|---|---|---|---|']
    lines += [f'| {b} | {t:.1f} | {tn:.1f} | {o:.1f} | x{r:.2f} |' for b, t, tn, o, r in rows]

    if args.default_config:
        full = ModelConfig()
        full_checkpoint = write_model(folder, full, 'default')
        full_onnx = export_checkpoint(full_checkpoint, folder / 'default.onnx', example_batch=1)
        print('default config (4096 points/block), batch 1')
        full_rows = bench_blocks(full_checkpoint, full_onnx, full, (1,), max(1, repeats // 2), args.threads)
        lines += ['', '## Per-block latency, default config (4096 points)', '',
                  '| batch | torch eager ms/block | torch + numpy FPS ms/block | ORT ms/block | ORT speed-up |',
                  '|---|---|---|---|---|']
        lines += [f'| {b} | {t:.1f} | {tn:.1f} | {o:.1f} | x{r:.2f} |' for b, t, tn, o, r in full_rows]

    print('FPS inside vs outside the ONNX graph (small config)')
    placement = bench_fps_placement(folder, checkpoint, cfg, repeats, args.threads)
    lines += ['', '## FPS inside vs outside the graph (small config, ORT, batch 2)', '',
              '| FPS | export time s | graph nodes | file MB | ORT ms/block (incl. numpy FPS when outside) |',
              '|---|---|---|---|---|']
    lines += [f'| {"inside (traced, unrolled)" if inside else "outside (numpy, indices as inputs)"} | {e:.1f} | {n} | '
              f'{mb:.1f} | {ms:.1f} |' for inside, (e, n, mb, ms) in placement.items()]
    lines += ['', 'Decision: FPS outside. Inside, the sequential FPS loop is unrolled by the tracer into tens of '
              'thousands of nodes (x4 for the default config), export is an order of magnitude slower and a '
              'TensorRT build of such a graph is impractical; and ORT ran it slower than the compact graph '
              'plus numpy FPS.']

    print('whole scenes (ONNX Runtime, small config, batch 8)')
    scenes = bench_scenes(onnx_path, args.threads)
    lines += ['', '## Whole scene (ONNX Runtime, small config, batch 8, bandwidth 0.6)', '',
              '| cloud | points | total s | stages (ms) | instances |', '|---|---|---|---|---|']
    for name, n, total, timings, instances in scenes:
        stages = ', '.join(f'{k} {v:.0f}' for k, v in timings.items() if k != 'total')
        lines += [f'| {name} | {n} | {total / 1e3:.1f} | {stages} | {instances} |']
    out = ROOT / 'benchmarks' / 'results' / 'runtime.md'
    atomic_write_text(out, '\n'.join(lines) + '\n')
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
