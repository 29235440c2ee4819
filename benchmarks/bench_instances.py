"""Instances a robot can use (issue 23), in one run: MPNet's instances with today's size filter and with the metric
filter (+ fragment join) it was tuned with, against a class-agnostic clustering peer, on the simulated lidar and
RGB-D test frames (single frames), and MPNet on the static hold-out rooms.

    python benchmarks/bench_instances.py --model runs/new.pt --tune --out out/bench_instances
        # --tune: first tune a copy of the model (OUT/tuned.pt) on the validation frames, as
        #   mpnet-eval --checkpoint OUT/tuned.pt --config config/eval_sim_lidar.yaml --tune --split val
        #   mpnet-eval --checkpoint OUT/tuned.pt --config config/eval_sim_rgbd.yaml --tune --split val
        # (--tune-static also: mpnet-eval ... --config config/train_synthetic.yaml --tune-size-filter --split val),
        # then benchmark the tuned copy (ship it: copy it to mpnet_model/assets/mpnet_synthetic.pt and
        # mpnet-export it to mpnet_model/assets/mpnet_synthetic.onnx).
    python benchmarks/bench_instances.py --model out/bench_instances/tuned.pt --out out/bench_instances_again

Rows, all from the same network outputs (each cloud's blocks run once; `CachingBackend` replays them):
* `MPNet, points filter`: the filter before issue 23 (the model's point fraction of its class mean point counts,
  floor 50, no join);
* `MPNet, metric filter`: what the model brings for the sensor kind (`size_filter auto`: its tuned area fraction,
  fragment join and point floor; for a kind it was not tuned for, e.g. static rooms by default, today's filter);
* `peer`: ground removal + 0.1 m voxel grid + 0.3 m Euclidean clustering (`mpnet_model.eval.peer`, scikit-learn).
Metrics at IoU 0.5: MPNet's per-class mPrec / mRec (ASIS), class-agnostic precision / recall for every row, the
class-agnostic recall of objects (gt instances not floor, ceiling or wall); the oriented boxes' yaw error on true
matches of elongated objects (table, sofa, bookcase, board with a true footprint aspect >= 1.5; truth: the
simulator's object boxes; modulo 180 deg: the long axis, and modulo 90 deg: the box's axes whichever is the longer
one); precision against the instance confidence per sensor kind (PNG). Data: the commands in
config/eval_sim_lidar.yaml, eval_sim_rgbd.yaml and train_synthetic.yaml. Timings are not reported (shared machine).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from mpnet_model.default_model import DEFAULT_CHECKPOINT

CONFIGS = {'lidar': 'config/eval_sim_lidar.yaml', 'rgbd': 'config/eval_sim_rgbd.yaml',
           'static': 'config/train_synthetic.yaml'}
ELONGATED = ('table', 'sofa', 'bookcase', 'board')
MIN_ASPECT = 1.5
YAW_TOLERANCE_DEG = 10.0


def tune(model: Path, out: Path, kinds=('lidar', 'rgbd'), kind_bandwidths: str | None = None) -> Path:
    """Tune a copy of `model` for `kinds` (mpnet-eval --tune; static: --tune-size-filter; `kind_bandwidths`
    'B1,B2,...': the kinds' own bandwidths are chosen too) -> its path."""
    from mpnet_model.eval.evaluate import main as eval_main

    tuned = out / 'tuned.pt'
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, tuned)
    for kind, config in ((k, CONFIGS[k]) for k in kinds):
        flag = '--tune-size-filter' if kind == 'static' else '--tune'
        extra = ['--kind-bandwidths', kind_bandwidths] if kind_bandwidths else []
        if eval_main(['--checkpoint', str(tuned), '--config', config, flag, '--split', 'val', '--backend', 'torch',
                      '--out', str(out / f'tune_{kind}'), *extra]) != 0:
            raise SystemExit(f'tuning failed for {kind}')
    return tuned


class Row:
    """Per-class and class-agnostic instance metrics of one way of making instances, with its per-prediction
    records (confidence, TP) and yaw errors."""

    def __init__(self, class_names):
        from mpnet_model.eval.metrics import AgnosticInstanceEvaluator, InstanceEvaluator

        self.per_class = InstanceEvaluator(len(class_names))
        self.agnostic = AgnosticInstanceEvaluator(class_names)
        self.class_names = tuple(class_names)
        self.predictions = 0
        self.clouds = 0
        self.scores: dict[tuple[str, int], tuple[float, float, int]] = {}   # (cloud, id) -> the three rankings
        self.yaw_errors: list[float] = []        # modulo 180 deg, elongated (aspect >= MIN_ASPECT)
        self.yaw_errors_all: list[float] = []    # modulo 180 deg, any aspect

    def add(self, cloud, labels, instances, infos=None, truth_boxes=None):
        labels = np.where(labels < 0, 0, labels)
        self.per_class.add(labels, instances, cloud.sem, cloud.ins, room_id=cloud.name)
        matches = self.agnostic.add(instances, cloud.sem, cloud.ins)
        self.predictions += len(np.unique(instances[instances >= 0]))
        self.clouds += 1
        if infos is None:
            return
        by_id = {info.id: info for info in infos}
        for info in infos:
            self.scores[(cloud.name, int(info.id))] = (info.confidence, info.score, info.num_points)
        if truth_boxes:
            self._yaw(matches, by_id, truth_boxes)

    def _yaw(self, matches, by_id, truth_boxes):
        from mpnet_model.infer.instances import yaw_error_deg

        for pred, gt, gt_class in zip(matches.pred, matches.gt, matches.gt_class):
            box = truth_boxes.get(int(gt))
            if self.class_names[gt_class] not in ELONGATED or box is None or box['yaw'] is None:
                continue
            error = float(yaw_error_deg(by_id[int(pred)].box_yaw, box['yaw']))
            self.yaw_errors_all.append(error)
            length, width = sorted(box['size'][:2], reverse=True)
            if length >= MIN_ASPECT * max(width, 1e-6):
                self.yaw_errors.append(error)

    def summary(self) -> dict:
        per_class, agnostic = self.per_class.compute(), self.agnostic.compute()
        out = {'mPrec': float(per_class['mPrec']), 'mRec': float(per_class['mRec']),
               'agnostic_precision': float(agnostic['precision']), 'agnostic_recall': float(agnostic['recall']),
               'object_recall': float(agnostic['object_recall']), 'gt_objects': agnostic['gt_objects'],
               'instances_per_cloud': self.predictions / max(self.clouds, 1), 'clouds': self.clouds,
               'precision_per_class': [float(v) for v in per_class['precision']],
               'recall_per_class': [float(v) for v in per_class['recall']]}
        if self.yaw_errors_all:
            errors = np.asarray(self.yaw_errors)
            axes = np.minimum(errors, 90.0 - errors)          # the box's axes, whichever side is the longer
            out.update(yaw_matches=len(errors), yaw_within=float(np.mean(errors <= YAW_TOLERANCE_DEG))
                       if len(errors) else float('nan'), yaw_median_deg=float(np.median(errors)) if len(errors)
                       else float('nan'), axes_within=float(np.mean(axes <= YAW_TOLERANCE_DEG)) if len(errors)
                       else float('nan'), yaw_matches_all=len(self.yaw_errors_all),
                       yaw_within_all=float(np.mean(np.asarray(self.yaw_errors_all) <= YAW_TOLERANCE_DEG)))
        if self.scores:
            from mpnet_model.eval.confidence import average_precision, precision_recall

            curves = self.curves()
            out['ap'] = {name: average_precision(*precision_recall(c['scores'], c['true_positive'], c['num_gt'])[1:])
                         for name, c in curves.items()}
            first = next(iter(curves.values()))
            out['tp_share'] = float(np.mean(first['true_positive']))
            # a random order has precision tp_share at every recall up to the final one
            out['ap_random'] = out['tp_share'] * float(np.sum(first['true_positive'])) / max(first['num_gt'], 1)
        return out

    def curves(self) -> dict:
        """{ranking: {scores, true_positive, num_gt}} of every prediction (TP: best same-class IoU >= 0.5)."""
        records = self.per_class.instance_records().pred
        num_gt = int(self.per_class.compute()['num_gt'].sum())
        values = np.array([self.scores[(str(room), int(k))] for room, k in zip(records.room, records.instance)],
                          dtype=np.float64).reshape(-1, 3)
        true_positive = records.best_iou >= 0.5
        return {name: {'scores': values[:, column], 'true_positive': true_positive, 'num_gt': num_gt,
                       'threshold_axis': name != 'points'}
                for column, name in enumerate(('confidence', 'mean arg-max probability', 'points'))}


def segmenters(model: str, kind: str, backend: str):
    """(today's, the model's metric) segmenters on one caching backend for `kind`."""
    from mpnet_model.eval.tune import CachingBackend
    from mpnet_model.infer.backends.base import make_backend
    from mpnet_model.infer.instances import instance_options
    from mpnet_model.infer.scene import SceneSegmenter

    cached = CachingBackend(make_backend(backend, model))
    metadata = cached.metadata
    common = {'block_size': metadata.block_size, 'stride': metadata.stride, 'bandwidth': metadata.cluster_bandwidth}
    today = SceneSegmenter(cached, **common, **instance_options(metadata, 'points', None))
    metric = SceneSegmenter(cached, **{**common, 'bandwidth': metadata.bandwidth_for(kind)},
                            **instance_options(metadata, 'auto', kind))
    return cached, today, metric


def run_kind(model: str, kind: str, backend: str, limit: int | None, out: Path) -> dict:
    from tqdm import tqdm

    from mpnet_model.data.config import load_data_config
    from mpnet_model.data.synthetic.frames import frame_true_boxes
    from mpnet_model.eval.confidence import render_confidence
    from mpnet_model.eval.peer import cluster_peer

    split = load_data_config(CONFIGS[kind]).split()
    paths = split.test[:limit] if limit else split.test
    cached, today, metric = segmenters(model, kind, backend)
    names = today.class_names
    rows = {'MPNet, points filter': Row(names), 'MPNet, metric filter': Row(names)}
    if kind != 'static':
        rows['peer (clustering)'] = Row(names)
    for path in tqdm(paths, desc=f'instances ({kind})', unit='cloud'):
        cloud = split.loader(path)
        truth = frame_true_boxes(path) if kind != 'static' else None
        for name, segmenter in (('MPNet, points filter', today), ('MPNet, metric filter', metric)):
            result = segmenter.segment(cloud.xyz, cloud.rgb, origin=cloud.origin)
            rows[name].add(cloud, result.labels, result.instances, result.instances_info, truth)
        if kind != 'static':
            rows['peer (clustering)'].add(cloud, np.zeros(len(cloud.xyz), np.int64), cluster_peer(cloud.xyz))
        cached.clear()
    summary = {name: row.summary() for name, row in rows.items()}
    summary['settings'] = {'metric filter': metric.size_filter.describe(), 'fragment_join': metric.fragment_join,
                           'min_instance_points': metric.min_instance_points,
                           'points filter': today.size_filter.describe()}
    if kind != 'static':
        render_confidence(rows['MPNet, metric filter'].curves(), out / f'confidence_{kind}.png',
                          f'MPNet instances on simulated {kind} test frames: precision vs instance confidence')
    return summary


def markdown(results: dict, model: str) -> str:
    lines = [f'Model: `{model}`. IoU 0.5. mPrec / mRec: per class (ASIS); agnostic: any class; objects: gt '
             'instances not floor / ceiling / wall.', '',
             '| data | row | mPrec | mRec | agnostic precision | agnostic recall | object recall | instances / cloud |',
             '|---|---|---|---|---|---|---|---|']
    for kind, rows in results.items():
        for name, r in rows.items():
            if name == 'settings':
                continue
            per_class = name.startswith('MPNet')
            lines.append(f"| {kind} | {name} | {r['mPrec']:.3f} | {r['mRec']:.3f} | " if per_class else
                         f'| {kind} | {name} | — | — | ')
            lines[-1] += (f"{r['agnostic_precision']:.3f} | {r['agnostic_recall']:.3f} | {r['object_recall']:.3f} | "
                          f"{r['instances_per_cloud']:.1f} |")
    lines += ['', '| data | metric filter settings |', '|---|---|']
    for kind, rows in results.items():
        s = rows['settings']
        lines.append(f"| {kind} | {s['metric filter']}, fragment join {s['fragment_join']:g} m, point floor "
                     f"{s['min_instance_points']} (points row: {s['points filter']}, floor 50, no join) |")
    lines += ['', f'Oriented boxes (metric filter row): yaw error on true matches (agnostic IoU >= 0.5) of '
              f'{", ".join(ELONGATED)} with a true footprint aspect >= {MIN_ASPECT}.', '',
              f'| data | matches | yaw within {YAW_TOLERANCE_DEG:g} deg | median yaw error [deg] | box axes within '
              f'{YAW_TOLERANCE_DEG:g} deg (modulo 90) | all aspects: matches, yaw within {YAW_TOLERANCE_DEG:g} deg |',
              '|---|---|---|---|---|---|']
    for kind, rows in results.items():
        r = rows['MPNet, metric filter']
        if 'yaw_matches_all' in r:
            lines.append(f"| {kind} | {r['yaw_matches']} | {100 * r['yaw_within']:.0f} % | {r['yaw_median_deg']:.1f} "
                         f"| {100 * r['axes_within']:.0f} % | {r['yaw_matches_all']}, "
                         f"{100 * r['yaw_within_all']:.0f} % |")
    matched = [r['MPNet, metric filter'] for r in results.values() if r['MPNet, metric filter'].get('yaw_matches')]
    if matched:
        count = sum(r['yaw_matches'] for r in matched)
        within = sum(r['yaw_within'] * r['yaw_matches'] for r in matched) / count
        axes = sum(r['axes_within'] * r['yaw_matches'] for r in matched) / count
        lines.append(f'| all frames | {count} | {100 * within:.0f} % | | {100 * axes:.0f} % | |')
    lines += ['', 'Confidence (metric filter row): average precision of the predictions ranked by each score '
              '(pooled over classes; random order: precision = the share of true positives at every recall).', '',
              '| data | by confidence | by mean arg-max probability | by size (points) | random order |',
              '|---|---|---|---|---|']
    for kind, rows in results.items():
        r = rows['MPNet, metric filter']
        if 'ap' in r:
            ap = r['ap']
            lines.append(f"| {kind} | {ap['confidence']:.3f} | {ap['mean arg-max probability']:.3f} | "
                         f"{ap['points']:.3f} | {r['ap_random']:.3f} |")
    return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', type=Path, default=Path(DEFAULT_CHECKPOINT))
    parser.add_argument('--tune', action='store_true', help='tune a copy of --model first (OUT/tuned.pt)')
    parser.add_argument('--tune-static', action='store_true',
                        help='--tune also the static kind (2 validation rooms; see docs/instances.md)')
    parser.add_argument('--out', type=Path, default=Path('out/bench_instances'))
    parser.add_argument('--backend', default='torch')
    parser.add_argument('--kinds', default='lidar,rgbd,static')
    parser.add_argument('--limit', type=int, default=None, help='at most this many test clouds per kind (a quick look)')
    parser.add_argument('--kind-bandwidths', default=None, metavar='B1,B2,...',
                        help='--tune: choose each kind\'s own mean-shift bandwidth among these too')
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    kinds = ('lidar', 'rgbd', 'static') if args.tune_static else ('lidar', 'rgbd')
    model = tune(args.model, args.out, kinds, args.kind_bandwidths) if args.tune else args.model
    results = {kind: run_kind(str(model), kind, args.backend, args.limit, args.out)
               for kind in args.kinds.split(',') if kind}
    text = markdown(results, str(model))
    print(text)
    (args.out / 'instances.md').write_text(text)
    (args.out / 'rows.json').write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == '__main__':
    sys.exit(main())
