"""`make demo` / `mpnet-demo`: the whole pipeline on real sample data with the shipped model, in one command.

1. a generated room with ground truth (synthetic, S3DIS classes): segmented, scored, rendered next to the truth;
2. the shared Ouster OS1-128 bag: segmented frame by frame through the bag tool (same path as the node) into an
   output bag (labelled clouds + instance markers), the last frame rendered;
3. the shared PCL office scan (Kinect, optical frame turned z-up): segmented and rendered.
PNGs (top and perspective views, by class and by instance) and summary.md land in --out; a summary is printed.
Where the shared data folder is missing, only the generated room runs (and the demo says so).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpnet_model.data.synthetic import generate_room
from mpnet_model.eval.metrics import InstanceEvaluator, SemanticEvaluator
from mpnet_model.infer.backends.registry import BACKEND_NAMES
from mpnet_model.infer.precision import PRECISIONS
from mpnet_model.infer.scene import SceneSegmenter
from mpnet_model.io.atomic import atomic_write_text
from mpnet_model.io.pointclouds import load_pcd, optical_to_z_up
from mpnet_model.viz.render import render_segmentation

OUSTER_TOPIC = '/ouster/points'


@dataclass
class SourceSummary:
    name: str
    frames: int
    points: int              # points per frame (last frame) that were segmented
    instances: Counter       # class name -> instances in the last frame
    latency_ms: list[float]
    picture: Path
    note: str = ''
    label_counts: Counter | None = None     # class name -> points (last frame)

    def row(self, backend: str) -> str:
        per_class = ', '.join(f'{name} {count}' for name, count in self.instances.most_common()) or 'none'
        latency = f'{np.median(self.latency_ms):.0f}' if self.latency_ms else '-'
        return (f'| {self.name} | {self.frames} | {self.points:,} | {sum(self.instances.values())} ({per_class}) '
                f'| {latency} | {backend} | {self.picture.name} |')


def _instances_per_class(instances_info) -> Counter:
    return Counter(info.class_name for info in instances_info)


def _label_counts(labels: np.ndarray, class_names) -> Counter:
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    return Counter({class_names[i]: int(c) for i, c in zip(ids, counts)})


def instance_size_filter(model: str) -> np.ndarray | None:
    """ASIS's per-class minimum instance size (the model's tuned fraction, else 0.25, x the training set's mean)
    when the model's checkpoint holds the statistics: valid for rooms scanned at the training density, such as the
    generated one (mpnet-eval's rule)."""
    from mpnet_model.default_model import DEFAULT_CHECKPOINT
    from mpnet_model.eval.evaluate import class_min_points, postprocess_settings
    from mpnet_model.model.checkpoint import read_checkpoint

    checkpoint = Path(model) if model else DEFAULT_CHECKPOINT
    if checkpoint.suffix != '.pt' or not checkpoint.is_file():
        return None
    extra = read_checkpoint(checkpoint)['extra']
    _, fraction = postprocess_settings(extra, None, None)
    return class_min_points(extra.get('class_mean_instance_points'), fraction)


def demo_generated_room(segmenter: SceneSegmenter, out: Path, seed: int, density: float,
                        class_min_points: np.ndarray | None = None) -> SourceSummary:
    xyz, rgb, sem, ins, meta = generate_room(np.random.default_rng([seed, 99]), density=density)
    if class_min_points is not None:
        segmenter = segmenter.replace(class_min_points=class_min_points)
    start = time.perf_counter()
    result = segmenter.segment(xyz, rgb / np.float32(255.0))
    latency = (time.perf_counter() - start) * 1e3
    num_classes = len(segmenter.class_names)
    labels = np.where(result.labels < 0, 0, result.labels)
    semantic, instance = SemanticEvaluator(num_classes), InstanceEvaluator(num_classes)
    semantic.add(labels, sem)
    instance.add(labels, result.instances, sem, ins)
    s, i = semantic.compute(), instance.compute()
    picture = out / 'generated_room.png'
    render_segmentation(xyz, result.labels, result.instances, segmenter.class_names, picture,
                        title=f'generated {meta["room_type"]}: prediction vs ground truth', gt_labels=sem,
                        gt_instances=ins)
    note = (f'oAcc {s["oAcc"]:.3f}, mIoU {s["mIoU"]:.3f}, mPrec {i["mPrec"]:.3f}, mRec {i["mRec"]:.3f} '
            f'({int(np.unique(ins).size)} true instances)')
    return SourceSummary('generated room (ground truth)', 1, len(xyz), _instances_per_class(result.instances_info),
                         [latency], picture, note, _label_counts(result.labels, segmenter.class_names))


def demo_ouster_bag(segmenter: SceneSegmenter, bag: Path, out: Path, max_range: float) -> SourceSummary:
    from mpnet_ros.bag_tool import segment_bag
    from mpnet_ros.params import validate_params

    results = []
    params = validate_params({'max_range': max_range}, check_files=False)
    output = out / 'ouster_labeled'
    if output.exists():
        shutil.rmtree(output)
    summary = segment_bag(bag, output, params, topic=OUSTER_TOPIC, storage='mcap', segmenter=segmenter,
                          on_result=results.append)
    if not results:
        raise RuntimeError(f'{bag}: no frame could be segmented')
    last = results[-1]
    picture = out / 'ouster.png'
    render_segmentation(last.xyz, last.labels, last.instances, segmenter.class_names, picture,
                        title=f'Ouster OS1-128 (street), last frame, {max_range:g} m range')
    return SourceSummary('Ouster OS1-128 bag', summary.frames_out, len(last.xyz),
                         _instances_per_class(last.instances_info), [r.timings['total_ms'] for r in results],
                         picture, f'output bag: {output}', _label_counts(last.labels, segmenter.class_names))


def demo_office_scan(segmenter: SceneSegmenter, pcd: Path, out: Path) -> SourceSummary:
    frame = load_pcd(pcd)
    xyz = optical_to_z_up(frame.xyz)
    start = time.perf_counter()
    result = segmenter.segment(xyz, frame.rgb, frame.intensity)
    latency = (time.perf_counter() - start) * 1e3
    picture = out / 'office.png'
    render_segmentation(xyz, result.labels, result.instances, segmenter.class_names, picture,
                        title='PCL office scan (Kinect)')
    return SourceSummary('PCL office scan', 1, len(xyz), _instances_per_class(result.instances_info), [latency],
                         picture, label_counts=_label_counts(result.labels, segmenter.class_names))


def write_summary(summaries: list[SourceSummary], backend: str, model: str, out: Path, notes: list[str]) -> str:
    lines = ['# mpnet_ros demo', '', f'Model: `{model}`, backend: {backend}.', '',
             '| source | frames | points/frame | instances (last frame, per class) | median latency [ms/frame] '
             '| backend | picture |', '|---|---|---|---|---|---|---|']
    lines += [s.row(backend) for s in summaries]
    lines += [''] + [f'- {s.name}: {s.note}' for s in summaries if s.note] + [f'- {n}' for n in notes]
    text = '\n'.join(lines) + '\n'
    atomic_write_text(out / 'summary.md', text)
    return text


def run_demo(segmenter: SceneSegmenter, out: Path, shared: Path, max_range: float = 8.0, seed: int = 0,
             room_density: float = 1500.0, skip_real: bool = False, model: str = ''
             ) -> tuple[list[SourceSummary], list[str]]:
    """Run every demo source that is available; returns their summaries and notes (what was skipped, and why)."""
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    summaries = [demo_generated_room(segmenter, out, seed, room_density, instance_size_filter(model))]
    data = shared / 'data'
    if skip_real:
        notes.append('real sample data skipped (--skip-real)')
    elif not data.is_dir():
        notes.append(f'{data} not found: ran on the generated room only')
        print(f'mpnet-demo: {data} not found, falling back to a generated room only')
    else:
        summaries.append(demo_ouster_bag(segmenter, data / 'ouster_os1_128', out, max_range))
        summaries.append(demo_office_scan(segmenter, data / 'pcl_office1.pcd', out))
    return summaries, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='mpnet-demo', description=__doc__.split('\n\n')[0])
    parser.add_argument('--shared', type=Path, default=Path('../shared'), help='folder holding data/ (sample data)')
    parser.add_argument('--out', type=Path, default=Path('out/demo'))
    parser.add_argument('--backend', default='onnxruntime', choices=BACKEND_NAMES)
    parser.add_argument('--model', default='', help='model file; empty = the shipped default')
    parser.add_argument('--precision', default='fp32', choices=PRECISIONS,
                        help='fp16: torch autocast / the fp16 ONNX graph; bf16: torch (docs/precision.md)')
    parser.add_argument('--max-range', type=float, default=8.0, help='Ouster range crop [m]')
    parser.add_argument('--room-density', type=float, default=1500.0,
                        help='generated room: points per m^2 (1500 = the training rooms)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--skip-real', action='store_true', help='only the generated room')
    args = parser.parse_args(argv)
    segmenter = SceneSegmenter.from_config(args.backend, args.model, precision=args.precision)
    model = args.model or 'shipped default (mpnet_model/assets)'
    print(f'mpnet-demo: model {model}, backend {args.backend}, precision {args.precision}, '
          f'classes {len(segmenter.class_names)}')
    summaries, notes = run_demo(segmenter, args.out, args.shared, args.max_range, args.seed, args.room_density,
                                args.skip_real, args.model)
    print(write_summary(summaries, args.backend, model, args.out, notes))
    print(f'mpnet-demo: pictures and summary in {args.out}/')
    return 0


if __name__ == '__main__':
    sys.exit(main())
