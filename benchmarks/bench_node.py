"""Per-frame latency of the node's core path on the shared Ouster bag, for every available backend.

Measures what the node's worker does per frame, in-process (no DDS transport): cloud_io.parse_cloud ->
ScenePipeline (range/crop filter, window, SceneSegmenter.segment) -> labelled PointCloud2 + MarkerArray built.
Reports p50/p95 per backend and the ratio to the torch backend measured in the same run; writes
benchmarks/results/bench_node.md.

    python benchmarks/bench_node.py [--model CHECKPOINT.pt] [--repeats 5] [--crop-box xmin ymin zmin xmax ymax zmax]

Without --model a random-weight small_config checkpoint is made (latency does not depend on the weights). The
Ouster scan is a street scene: by default only an 8 m x 2 m crop is segmented (the model is for indoor scenes).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpnet_model.io.atomic import atomic_write_text  # noqa: E402

OUSTER_BAG = Path(os.environ.get('MPNET_SHARED', REPO.parent / 'shared')) / 'data' / 'ouster_os1_128'
RESULTS = REPO / 'benchmarks' / 'results' / 'bench_node.md'


def read_frames(bag: Path) -> list:
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        return [reader.deserialize(raw, conn.msgtype) for conn, _, raw in reader.messages()]


def make_models(workdir: Path, checkpoint: str | None) -> dict[str, str]:
    """backend -> model file, for the backends importable here."""
    import torch

    from mpnet_model.config import small_config
    from mpnet_model.model.checkpoint import save_checkpoint
    from mpnet_model.model.mpnet import MPNet

    if checkpoint is None:
        torch.manual_seed(0)
        cfg = small_config()
        checkpoint = str(save_checkpoint(workdir / 'bench.pt', MPNet(cfg).eval(), cfg))
    models = {'torch': checkpoint}
    try:
        import onnxruntime  # noqa: F401

        from mpnet_model.infer.export import export_checkpoint
        models['onnxruntime'] = str(export_checkpoint(checkpoint, workdir / 'bench.onnx'))
    except Exception as exc:  # noqa: BLE001 - report and go on with what is available
        print(f'onnxruntime backend skipped: {type(exc).__name__}: {exc}')
    if torch.cuda.is_available():
        try:
            import tensorrt  # noqa: F401
            models['tensorrt'] = models.get('onnxruntime', '')
        except ImportError:
            print('tensorrt backend skipped: tensorrt is not importable')
    else:
        print('tensorrt backend skipped: no CUDA device')
    return {k: v for k, v in models.items() if v}


def time_backend(backend: str, model: str, frames: list, crop_box: list[float], repeats: int) -> np.ndarray:
    """Per-frame latencies [ms] of the core path (first frame = warm-up, not counted)."""
    from std_msgs.msg import Header

    from mpnet_ros.cloud_io import labeled_cloud_msg, parse_cloud
    from mpnet_ros.markers import instance_markers
    from mpnet_ros.params import validate_params
    from mpnet_ros.pipeline import ScenePipeline, make_segmenter

    device = 'cuda' if backend == 'tensorrt' else 'cpu'
    params = validate_params({'backend': backend, 'model_path': model, 'crop_box': crop_box, 'device': device,
                              'precision': 'fp16' if backend == 'tensorrt' else 'fp32'})
    pipeline = ScenePipeline(params, make_segmenter(params))
    num_classes = len(pipeline.class_names)
    latencies = []
    for index, msg in enumerate([frames[0]] + frames * repeats):
        start = time.perf_counter()
        pipeline.add(parse_cloud(msg, params.max_points, params.drop_zero_points))
        result = pipeline.process(pipeline.window.snapshot())
        labeled_cloud_msg(Header(frame_id=result.frame_id), result.xyz, result.labels, result.instances,
                          result.scores, num_classes)
        instance_markers(Header(frame_id=result.frame_id), result.instances_info)
        if index:
            latencies.append((time.perf_counter() - start) * 1e3)
    return np.asarray(latencies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', help='checkpoint (.pt); default: a random-weight small_config model')
    parser.add_argument('--repeats', type=int, default=3, help='passes over the 3 scans')
    parser.add_argument('--crop-box', type=float, nargs=6, default=[-4.0, -10.0, -3.0, 4.0, -8.0, 5.0])
    args = parser.parse_args(argv)
    if not OUSTER_BAG.exists():
        print(f'bench_node: shared data not found at {OUSTER_BAG}')
        return 1
    frames = read_frames(OUSTER_BAG)
    with tempfile.TemporaryDirectory() as tmp:
        models = make_models(Path(tmp), args.model)
        stats = {}
        for backend, model in models.items():
            latencies = time_backend(backend, model, frames, args.crop_box, args.repeats)
            stats[backend] = (np.percentile(latencies, 50), np.percentile(latencies, 95), len(latencies))
    baseline = stats['torch'][0]
    lines = ['# bench_node: per-frame latency of the node core path (Ouster OS-1-128 bag)', '',
             f'crop box {args.crop_box}, {args.repeats} passes over 3 scans, model '
             f'{args.model or "random small_config"}; CPU cores: {os.cpu_count()}', '',
             '| backend | p50 ms | p95 ms | frames | p50 vs torch |', '|---|---|---|---|---|']
    for backend, (p50, p95, count) in stats.items():
        lines.append(f'| {backend} | {p50:.1f} | {p95:.1f} | {count} | {p50 / baseline:.2f}x |')
    report = '\n'.join(lines) + '\n'
    print(report)
    atomic_write_text(RESULTS, report)
    return 0


if __name__ == '__main__':
    sys.exit(main())
