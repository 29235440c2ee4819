"""Whole-room evaluation through the same `SceneSegmenter` path the robot runs (blocks → backend → mean shift →
BlockMerging → every point), so a metric measures what ships.

`mpnet-eval --checkpoint runs/x/best.pt --config config/train_s3dis.yaml --out results/x`
`mpnet-eval --checkpoint model.pt --config config/eval_sim_lidar.yaml --window 1,5 --out results/lidar` (simulated
sensor frames, `data.dataset: frames`: single frames and accumulated windows, per class, instance and range band)

The mean-shift bandwidth and the size-filter fraction are the checkpoint's tuned values (`extra` keys
`cluster_bandwidth`, `min_instance_fraction`) when it has them, else ASIS's 0.6 and 0.25 (an exported .onnx model
uses the values in its metadata); `--bandwidth` / `--min-instance-fraction` override them. `--tune` first chooses
both on the validation rooms (`mpnet_model.eval.tune`), writes them into the checkpoint (atomically) and then
evaluates with them.

The size filter (issue 23, `mpnet_model.infer.instances`): `--size-filter auto` (default) uses the metric (area)
filter when the model records the class mean areas and a fraction for the data's sensor kind (simulated frames:
lidar or rgbd, from their sequence.json; rooms: static; `--sensor-kind` overrides), else the point filter;
`points` / `area` / `off` force one. `--tune` on a frames config (config/eval_sim_lidar.yaml, eval_sim_rgbd.yaml)
tunes the area fraction of that sensor kind on its validation frames (with `--kind-bandwidths B1,B2,...` also the
kind's own mean-shift bandwidth). On a rooms config `--tune` chooses the bandwidth and point fraction only: whole
static rooms keep the point filter (docs/instances.md); `--tune-size-filter` tunes the `static` kind's area filter
and fragment join when asked (on a frames config: the same as `--tune`). The class mean areas come from the
model's training data (the checkpoint's own train_config, or `--stats-config`) and are stored once.

    mpnet-eval --checkpoint M.pt --config config/eval_sim_lidar.yaml --tune --out out/tune_lidar
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mpnet_model.config import ConfigError
from mpnet_model.data.room import Room
from mpnet_model.eval.metrics import InstanceEvaluationRecords, InstanceEvaluator, ScanNetAPEvaluator, SemanticEvaluator
from mpnet_model.eval.report import write_report
from mpnet_model.infer.blocking import LAYOUTS, SAMPLERS
from mpnet_model.infer.scene import SceneResult, SceneSegmenter
from mpnet_model.io.atomic import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    semantic: dict
    instance: dict
    scannet_ap: dict | None
    records: InstanceEvaluationRecords
    seconds_per_room: float
    rooms: list[str] = field(default_factory=list)

    def results(self) -> dict:
        out = {'semantic': self.semantic, 'instance': self.instance}
        if self.scannet_ap is not None:
            out['scannet_ap'] = self.scannet_ap
        return out

    def summary(self) -> dict[str, float]:
        keys = {'semantic': ('oAcc', 'mAcc', 'mIoU'), 'instance': ('mCov', 'mWCov', 'mPrec', 'mRec', 'mFrag', 'mSplit'),
                'scannet_ap': ('mAP', 'mAP50', 'mAP25')}
        return {name: float(part[name]) for section, names in keys.items()
                for part in [self.results().get(section)] if part is not None for name in names}


def evaluate_rooms(segmenter: SceneSegmenter, rooms: Iterable[Room], scannet_ap: bool = False,
                   progress: bool = True, on_room: Callable[[Room, SceneResult], None] | None = None) -> Evaluation:
    """Segment each room with `segmenter` and accumulate semantic, S3DIS-instance (and ScanNet AP) metrics."""
    num_classes = len(segmenter.class_names)
    semantic = SemanticEvaluator(num_classes)
    instance = InstanceEvaluator(num_classes)
    # ScanNet benchmark: wall and floor (ids 0, 1) are not instance classes.
    ap = ScanNetAPEvaluator(num_classes, eval_classes=range(2, num_classes)) if scannet_ap else None
    names, seconds = [], 0.0
    for room in tqdm(rooms, desc='evaluating rooms', unit='room', disable=not progress):
        if tuple(room.class_names) != tuple(segmenter.class_names):
            raise ConfigError(f'room {room.name}: classes {room.class_names} differ from the model\'s '
                              f'{segmenter.class_names}')
        start = time.perf_counter()
        result = segmenter.segment(room.xyz, room.rgb, origin=room.origin)
        seconds += time.perf_counter() - start
        # Points no block reached (label -1) count as wrong rather than being dropped.
        labels = np.where(result.labels < 0, 0, result.labels)
        semantic.add(labels, room.sem)
        instance.add(labels, result.instances, room.sem, room.ins, room_id=room.name)
        if ap is not None:
            ap.add_from_labels(room.sem, room.ins, labels, result.instances, result.scores)
        names.append(room.name)
        if on_room is not None:
            on_room(room, result)
    if not names:
        raise ValueError('no rooms to evaluate')
    return Evaluation(semantic.compute(), instance.compute(), ap.compute() if ap else None,
                      instance.instance_records(), seconds / len(names), names)


def write_evaluation(evaluation: Evaluation, class_names, class_shares, out_dir: str | Path, title: str
                     ) -> dict[str, Path]:
    """Markdown/CSV report (per class and dominance tier), summary.json and the per-instance records (.npz)."""
    out_dir = Path(out_dir)
    paths = write_report(evaluation.results(), class_names, class_shares, out_dir, title)
    summary = {**evaluation.summary(), 'rooms': len(evaluation.rooms), 'seconds_per_room': evaluation.seconds_per_room}
    paths['summary'] = out_dir / 'summary.json'
    atomic_write_text(paths['summary'], json.dumps(summary, indent=2))
    paths['gt_records'] = out_dir / 'gt_instances.npz'
    evaluation.records.gt.save(str(paths['gt_records']))
    paths['pred_records'] = out_dir / 'pred_instances.npz'
    evaluation.records.pred.save(str(paths['pred_records']))
    return paths


ASIS_MIN_INSTANCE_FRACTION = 0.25   # ASIS / SGPN: drop instances under 0.25 x the class's mean training instance
ASIS_BANDWIDTH = 0.6                # ASIS / MPNet: mean-shift bandwidth on the instance embeddings


def postprocess_settings(extra: dict, bandwidth: float | None = None, fraction: float | None = None
                         ) -> tuple[float, float]:
    """(bandwidth, size fraction): the given values, else the checkpoint's tuned ones, else ASIS's 0.6 / 0.25."""
    from mpnet_model.eval.tune import BANDWIDTH_KEY, FRACTION_KEY

    if bandwidth is None:
        bandwidth = float(extra.get(BANDWIDTH_KEY, ASIS_BANDWIDTH))
    if fraction is None:
        fraction = float(extra.get(FRACTION_KEY, ASIS_MIN_INSTANCE_FRACTION))
    return bandwidth, fraction


def class_min_points(mean_instance_points, fraction: float = ASIS_MIN_INSTANCE_FRACTION) -> np.ndarray | None:
    """Per-class minimum instance size for whole-room evaluation, from the training set's mean instance sizes."""
    if mean_instance_points is None or fraction <= 0:
        return None
    return fraction * np.asarray(mean_instance_points, dtype=np.float64)


def training_instance_sizes(split, cache_dir: str | Path, progress: bool = True) -> list[float] | None:
    """Mean instance size per class over the training rooms (for checkpoints that do not store it)."""
    from mpnet_model.data.dataset import BlockDataset, build_cache

    if not split.train:
        return None
    paths = build_cache(split.train, cache_dir, split.loader, progress=progress)
    return BlockDataset(paths, num_points=1, progress=False).class_mean_instance_points().tolist()


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(',') if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f'expected comma-separated numbers, got {text!r}') from error


def tune_checkpoint(args, split, extra: dict, cache_dir: str) -> dict:
    """`--tune`: choose bandwidth and size fraction on the validation rooms, write them into the checkpoint and
    the grid into --out; returns the new `extra` entries."""
    from mpnet_model.eval.tune import DEFAULT_BANDWIDTHS, DEFAULT_FRACTIONS, tune_postprocessing
    from mpnet_model.infer.backends.base import make_backend
    from mpnet_model.model.checkpoint import update_checkpoint_extra

    if not args.checkpoint.endswith('.pt'):
        raise ValueError(f'--tune stores the values in a checkpoint (.pt); got {args.checkpoint}')
    if not split.val:
        raise FileNotFoundError('--tune needs validation rooms: the config\'s split has none (data.val_fraction)')
    sizes = extra.get('class_mean_instance_points')
    if sizes is None:
        sizes = training_instance_sizes(split, cache_dir)
    backend = make_backend(args.backend, args.checkpoint, device=args.device)
    result = tune_postprocessing(backend, (split.loader(r) for r in split.val), sizes,
                                 args.bandwidths or DEFAULT_BANDWIDTHS, args.fractions or DEFAULT_FRACTIONS)
    updates = result.to_extra('val')
    if 'class_mean_instance_points' not in extra and sizes is not None:
        updates['class_mean_instance_points'] = [float(v) for v in sizes]
    update_checkpoint_extra(args.checkpoint, updates)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / 'tuning.md', f'# Post-processing tuned on the validation rooms\n\n{result.markdown()}')
    print(f'mpnet-eval: tuned bandwidth {result.bandwidth:g}, size fraction {result.fraction:g} '
          f'(stored in {args.checkpoint})')
    return updates


def training_instance_areas(extra: dict, stats_config: str | None, voxel: float, num_classes: int,
                            fallback=None, progress: bool = True) -> list[float]:
    """Mean occupied area per class [m^2] of the ground-truth instances of the model's training clouds: those of
    `stats_config`'s data section, else of the checkpoint's own train_config (what it was trained on), else of the
    `fallback` DataConfig's training split (the evaluated data's; logged)."""
    from mpnet_model.data.config import data_config_from_dict, load_data_config
    from mpnet_model.infer.instances import class_mean_instance_area

    if stats_config:
        data, source = load_data_config(stats_config), stats_config
    elif (extra.get('train_config') or {}).get('data'):
        data, source = data_config_from_dict(dict(extra['train_config']['data'])), 'the checkpoint train_config'
    elif fallback is not None:
        data, source = fallback, 'the evaluated config (the checkpoint records no train_config)'
        log.warning('class mean instance areas from %s: its training split', source)
    else:
        raise ValueError('the class mean instance areas need the training data: the checkpoint records no '
                         'train_config; name a config with --stats-config')
    split = data.split()
    if not split.train:
        raise FileNotFoundError(f'no training clouds in the data of {source}')
    rooms = (split.loader(r) for r in dict.fromkeys(split.train))          # repeated sources counted once
    areas = class_mean_instance_area(rooms, num_classes, voxel, progress=progress)
    log.info('class mean instance areas from %d training clouds at %g m voxels: %s', len(set(split.train)), voxel,
             ', '.join(f'{a:.2f}' for a in areas))
    return [float(a) for a in areas]


def tune_size_filter_checkpoint(args, val_clouds, sensor_kind: str, extra: dict, segment=None, data=None) -> dict:
    """Tune the area fraction of `sensor_kind` on `val_clouds` (Rooms) and store it (with the class mean areas) in
    the checkpoint; the grid goes to --out/size_filter_<kind>.md. Returns the new extra entries."""
    from mpnet_model.eval.tune import AREA_SIZES_KEY, AREA_VOXEL_KEY, tune_size_filter
    from mpnet_model.infer.backends.base import make_backend
    from mpnet_model.infer.instances import DEFAULT_AREA_VOXEL
    from mpnet_model.model.checkpoint import update_checkpoint_extra

    if not args.checkpoint.endswith('.pt'):
        raise ValueError(f'--tune stores the values in a checkpoint (.pt); got {args.checkpoint}')
    voxel = float(extra.get(AREA_VOXEL_KEY, DEFAULT_AREA_VOXEL))
    backend = make_backend(args.backend, args.checkpoint, device=args.device)
    areas = extra.get(AREA_SIZES_KEY)
    if areas is None:
        areas = training_instance_areas(extra, args.stats_config, voxel, len(backend.class_names), data)
    bandwidth = float(extra.get('cluster_bandwidth', backend.metadata.cluster_bandwidth))
    layout = {'layout': args.layout} if args.layout else {}
    # --kind-bandwidths chooses the kind's own bandwidth too (opt-in: on the shipped model's few validation frames
    # the choice did not carry over to the test frames, benchmarks/results/instances_kind_bandwidth.md).
    result = tune_size_filter(backend, val_clouds, sensor_kind, areas, extra.get('class_mean_instance_points'),
                              voxel=voxel, segment=segment, bandwidth=bandwidth, bandwidths=args.kind_bandwidths,
                              seed=args.seed, sampler=args.sampler, sparse_points=args.sparse_points, **layout)
    updates = result.to_extra(extra, areas, voxel)
    update_checkpoint_extra(args.checkpoint, updates)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f'size_filter_{sensor_kind}.md',
                      f'# Size filter tuned for {sensor_kind} on the validation clouds\n\n{result.markdown()}')
    print(f'mpnet-eval: tuned the area size filter for {sensor_kind}: fraction {result.fraction:g} of the class mean '
          f'occupied areas, bandwidth {result.best["bandwidth"]:g} (stored in {args.checkpoint})')
    return updates


def size_filter_kwargs(args, sensor_kind: str) -> dict:
    """SceneSegmenter.from_config arguments of the size filter chosen on the command line."""
    return {'size_filter': args.size_filter, 'sensor_kind': args.sensor_kind or sensor_kind}


def main(argv: list[str] | None = None) -> int:
    from mpnet_model.data.config import load_data_config
    from mpnet_model.infer.backends.base import BackendError
    from mpnet_model.infer.backends.registry import BACKEND_NAMES
    from mpnet_model.model.checkpoint import CheckpointError, read_checkpoint

    parser = argparse.ArgumentParser(prog='mpnet-eval', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', required=True, help='checkpoint (.pt) or ONNX model (.onnx)')
    parser.add_argument('--config', help='YAML whose data section names the dataset and split (its test part is used)')
    parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='SECTION.KEY=VALUE')
    parser.add_argument('--backend', default='torch', choices=BACKEND_NAMES)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--split', default='test', choices=['test', 'val', 'train'])
    parser.add_argument('--layout', choices=LAYOUTS, help='block layout of the frame path (default: the shipped '
                        'default, see docs/frame_layouts.md)')
    parser.add_argument('--sampler', choices=SAMPLERS, default='auto',
                        help="block sampling; 'legacy' = the per-block draw of the path before issue 12")
    parser.add_argument('--seed', type=int, default=0, help='block sampling seed')
    parser.add_argument('--border-join', type=float, default=None, metavar='METRES',
                        help='join same-class instances across borders of blocks that never held both sides '
                             '(SceneSegmenter border_join; default: the segmenter\'s)')
    parser.add_argument('--no-sparse-points', dest='sparse_points', action='store_false',
                        help='sample every block to the model\'s full points per block (no smaller buckets)')
    parser.add_argument('--out', required=True, help='folder for the report')
    parser.add_argument('--min-instance-fraction', type=float, default=None,
                        help='drop predicted instances under this fraction of the mean training instance size of '
                             'their class (0 = off; default: the checkpoint\'s tuned value, else ASIS\'s 0.25)')
    parser.add_argument('--window', default='1', help='sensor frames: comma list of window sizes (frames accumulated)')
    parser.add_argument('--gravity-align', choices=('off', 'auto'), default='off',
                        help='sensor frames: level each cloud on its floor plane first (as the node does without tf)')
    parser.add_argument('--bandwidth', type=float, default=None,
                        help='mean-shift bandwidth (default: the checkpoint\'s tuned value, else ASIS\'s 0.6)')
    parser.add_argument('--tune', action='store_true',
                        help='choose bandwidth and size fraction on the validation rooms, store them in the '
                             'checkpoint (.pt, rewritten atomically), then evaluate --split with them')
    parser.add_argument('--tune-size-filter', action='store_true',
                        help='choose only the area size filter and fragment join of the sensor kind (frames: lidar / '
                             'rgbd; rooms: static) on the validation clouds, store them in the checkpoint, then '
                             'evaluate (--tune on a frames config does the same)')
    parser.add_argument('--bandwidths', type=_float_list, default=None, metavar='B1,B2,...',
                        help='bandwidths tried by --tune (default 0.3,0.4,0.5,0.6,0.8,1.0,1.2,1.5)')
    parser.add_argument('--kind-bandwidths', type=_float_list, default=None, metavar='B1,B2,...',
                        help='also choose the mean-shift bandwidth of the sensor kind among these, with its size '
                             'filter, and store it per kind (default: keep the model\'s bandwidth; e.g. '
                             '0.2,0.3,0.4,0.5,0.6,0.8)')
    parser.add_argument('--fractions', type=_float_list, default=None, metavar='F1,F2,...',
                        help='size fractions tried by --tune (default 0,0.1,0.25,0.5,0.75,1)')
    parser.add_argument('--size-filter', choices=('auto', 'area', 'points', 'off'), default='auto',
                        help="per-class size filter: auto = the metric (area) filter when the model has it for the "
                             "sensor kind, else the point filter (mpnet_model/infer/instances.py)")
    parser.add_argument('--sensor-kind', choices=('lidar', 'rgbd', 'static'), default=None,
                        help='whose tuned area fraction applies (default: from the frames, static for rooms)')
    parser.add_argument('--stats-config', default=None,
                        help='--tune: config whose training data gives the class mean instance areas (default: the '
                             "checkpoint's own train_config)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        d = load_data_config(args.config, args.overrides)
        split = d.split()
        room_dirs = getattr(split, args.split)
        if not room_dirs:
            raise FileNotFoundError(f'the {args.split} split of {d.root} holds no rooms')
        if d.dataset == 'frames':
            return _evaluate_frames(args, d, room_dirs)
        is_checkpoint = args.checkpoint.endswith('.pt')
        extra = read_checkpoint(args.checkpoint)['extra'] if is_checkpoint else {}
        if args.tune:
            extra = {**extra, **tune_checkpoint(args, split, extra, d.cache_dir)}
            args.bandwidth = args.bandwidth if args.bandwidth is not None else extra.get('cluster_bandwidth')
        if args.tune_size_filter:             # the static kind only when asked (module docstring)
            if not split.val:
                raise FileNotFoundError('--tune-size-filter needs validation rooms: the config\'s split has '
                                        'none (data.val_fraction)')
            extra = {**extra, **tune_size_filter_checkpoint(args, (split.loader(r) for r in split.val),
                                                            args.sensor_kind or 'static', extra, data=d)}
        shares, sizes = extra.get('class_shares'), extra.get('class_mean_instance_points')
        options = size_filter_kwargs(args, 'static')
        uses_area = args.size_filter == 'area' or (args.size_filter == 'auto' and is_checkpoint and bool(
            extra.get('class_mean_instance_area')) and (args.min_instance_fraction is not None or (
                extra.get('min_instance_area_fraction') or {}).get(options['sensor_kind']) is not None))
        if uses_area:
            options.update(size_filter='area', min_instance_fraction=args.min_instance_fraction)
            if args.bandwidth is not None or is_checkpoint:
                options['bandwidth'] = postprocess_settings(extra, args.bandwidth)[0]
            log.info('post-processing: bandwidth %s, area size filter (%s)', options.get('bandwidth', 'the model\'s'),
                     options['sensor_kind'])
        elif is_checkpoint or args.bandwidth is not None or args.min_instance_fraction is not None:
            # An exported model otherwise brings its own values in its metadata (SceneSegmenter.from_config).
            bandwidth, fraction = postprocess_settings(extra, args.bandwidth, args.min_instance_fraction)
            if sizes is None and fraction > 0:
                sizes = training_instance_sizes(split, d.cache_dir)
            log.info('post-processing: bandwidth %g, size fraction %g', bandwidth, fraction)
            options = {'bandwidth': bandwidth, 'class_min_points': class_min_points(sizes, fraction),
                       'size_filter': 'off' if args.size_filter == 'off' else 'points'}
        if args.layout:
            options['layout'] = args.layout
        if args.border_join is not None:
            options['border_join'] = args.border_join
        segmenter = SceneSegmenter.from_config(args.backend, args.checkpoint, device=args.device,
                                               sampler=args.sampler, seed=args.seed,
                                               sparse_points=args.sparse_points, **options)
        evaluation = evaluate_rooms(segmenter, (split.loader(r) for r in room_dirs),
                                    scannet_ap=d.dataset == 'scannet')
    except (ConfigError, FileNotFoundError, CheckpointError, BackendError, ValueError) as error:
        print(f'mpnet-eval: error: {error}', file=sys.stderr)
        return 2
    if shares is None:
        log.warning('no training class shares in the checkpoint: dominance tiers use the evaluated rooms\' shares')
        shares = evaluation.semantic['gt_points']
    paths = write_evaluation(evaluation, segmenter.class_names, shares, args.out,
                             f'{Path(args.checkpoint).stem} on {d.dataset} {args.split}')
    print(json.dumps(evaluation.summary(), indent=2))
    print(f'mpnet-eval: report in {paths["summary"].parent}')
    return 0


def _evaluate_frames(args, d, frame_paths) -> int:
    """Sensor frames, one row per window size, with the post-processing the robot gets from the model: its
    metadata's bandwidth and size filter (a tuned model's `min_instance_fraction` x class mean instance sizes;
    none for an untuned model, where the robot's min_instance_points alone rules)."""
    from mpnet_model.eval import frames as frame_eval
    from mpnet_model.model.checkpoint import read_checkpoint

    layout = {'layout': args.layout} if args.layout else {}
    if args.border_join is not None:
        layout['border_join'] = args.border_join
    kind = args.sensor_kind or frame_eval.sensor_kind(frame_paths)
    if args.tune or args.tune_size_filter:
        split = d.split()
        if not split.val:
            raise FileNotFoundError(f'--tune needs validation frames: {d.root} has none (data.val_fraction)')
        extra = read_checkpoint(args.checkpoint)['extra'] if args.checkpoint.endswith('.pt') else {}
        tune_size_filter_checkpoint(args, (split.loader(p) for p in split.val), kind, extra,
                                    segment=_frame_segment(args.gravity_align), data=d)
    segmenter = SceneSegmenter.from_config(args.backend, args.checkpoint, device=args.device, sampler=args.sampler,
                                           seed=args.seed, sparse_points=args.sparse_points,
                                           min_instance_fraction=args.min_instance_fraction,
                                           **({'bandwidth': args.bandwidth} if args.bandwidth else {}),
                                           **size_filter_kwargs(args, kind), **layout)
    log.info('size filter: %s (sensor kind %s)', segmenter.size_filter.describe(), kind)
    segment = frame_eval.segment_with(segmenter, args.gravity_align)
    results = {}
    for window in (int(w) for w in args.window.split(',') if w.strip()):
        items = frame_eval.frame_items(frame_paths, window, d.lidar_colour)
        results[f'window {window}'] = frame_eval.evaluate_clouds(segment, items, len(segmenter.class_names),
                                                                 desc=f'window {window}')
    frame_eval.write_results(results, segmenter.class_names, args.out,
                             f'{Path(args.checkpoint).stem} on {d.root} ({args.split}, gravity {args.gravity_align})')
    print(frame_eval.summary_markdown(results, segmenter.class_names))
    print(f'mpnet-eval: report in {args.out}')
    return 0


def _frame_segment(gravity_align: str):
    """segment(segmenter, cloud) -> SceneResult as the frames benchmark runs it (optionally levelled first)."""
    def segment(segmenter, cloud):
        if gravity_align == 'auto':
            from mpnet_model.infer.gravity import segment_gravity_aligned

            return segment_gravity_aligned(segmenter, cloud.xyz, cloud.rgb, origin=cloud.origin)[0]
        return segmenter.segment(cloud.xyz, cloud.rgb, origin=cloud.origin)
    return segment


if __name__ == '__main__':
    sys.exit(main())
