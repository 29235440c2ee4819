"""Simulated-sensor benchmark: models side by side on held-out lidar and RGB-D frames (and the static hold-out).

Runs `mpnet-eval` for every model on config/eval_sim_lidar.yaml and config/eval_sim_rgbd.yaml (single frames and
5-frame windows), optionally on the static synthetic hold-out, and writes docs/results_sensors.md style tables
with each model's difference to the FIRST model (the baseline row: today's shipped model), plus pictures
(prediction vs ground truth) of one lidar frame, one lidar window and one RGB-D frame per model.

    python benchmarks/bench_sensors.py --out out/bench_sensors [--model NAME=path.pt ...] [--static] [--gravity]

Data first (the commands in the two eval configs). The machine was shared with other jobs: timings are not
reported, only metrics (which do not depend on load).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mpnet_model.default_model import DEFAULT_CHECKPOINT

CONFIGS = {'lidar': 'config/eval_sim_lidar.yaml', 'rgbd': 'config/eval_sim_rgbd.yaml'}


def run_eval(model: str, config: str, out: Path, windows: str, gravity: str = 'off', backend: str = 'torch') -> dict:
    from mpnet_model.eval.evaluate import main as eval_main

    if not (out / 'summary.json').is_file():
        args = ['--checkpoint', model, '--config', config, '--out', str(out), '--backend', backend]
        if windows:
            args += ['--window', windows, '--gravity-align', gravity]
        if eval_main(args) != 0:
            raise SystemExit(f'mpnet-eval failed for {model} on {config}')
    return json.loads((out / 'summary.json').read_text())


def pictures(model: str, name: str, out: Path) -> list[Path]:
    """Prediction vs ground truth of the first test frame / window of each sensor kind."""
    from mpnet_model.data.config import load_data_config
    from mpnet_model.eval.frames import frame_items, segment_with
    from mpnet_model.infer.scene import SceneSegmenter
    from mpnet_model.viz.render import render_segmentation

    segmenter = SceneSegmenter.from_config('torch', model)
    run = segment_with(segmenter)
    paths = []
    for kind, config in CONFIGS.items():
        d = load_data_config(config)
        test = d.split().test
        for window in (1, 5) if kind == 'lidar' else (1,):
            room = frame_items(test, window, d.lidar_colour)[0]()
            labels, instances = run(room)
            path = out / f'{name}_{kind}_w{window}.png'
            render_segmentation(room.xyz, labels, instances, segmenter.class_names, path,
                                title=f'{name}: simulated {kind}, {room.name}', gt_labels=room.sem,
                                gt_instances=room.ins, height_fraction=0.85)
            paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, default=Path('out/bench_sensors'))
    parser.add_argument('--model', action='append', default=[], metavar='NAME=PATH',
                        help='more models after the baseline (the shipped model)')
    parser.add_argument('--windows', default='1,5')
    parser.add_argument('--static', action='store_true', help='also the static synthetic hold-out (Area 5)')
    parser.add_argument('--gravity', action='store_true', help='also each sensor run with --gravity-align auto')
    parser.add_argument('--no-pictures', action='store_true')
    args = parser.parse_args()
    models = [('shipped', str(DEFAULT_CHECKPOINT))] + [tuple(m.split('=', 1)) for m in args.model]
    rows: dict[str, dict[str, dict]] = {}
    for name, path in models:
        for kind, config in CONFIGS.items():
            rows.setdefault(f'{kind}', {})[name] = run_eval(path, config, args.out / name / kind, args.windows)
            if args.gravity:
                rows.setdefault(f'{kind}, gravity auto', {})[name] = run_eval(
                    path, config, args.out / name / f'{kind}_gravity', args.windows, 'auto')
        if args.static:
            rows.setdefault('static', {})[name] = {'window -': run_eval(path, 'config/train_synthetic.yaml',
                                                                         args.out / name / 'static', '')}
        if not args.no_pictures:
            pictures(path, name, args.out)
    base = models[0][0]
    lines = ['| data | run | model | mIoU | Δ mIoU vs shipped | oAcc | mPrec | mRec |',
             '|---|---|---|---|---|---|---|---|']
    for data, by_model in rows.items():
        for run in by_model[base]:
            for name, _ in models:
                r = by_model[name][run]
                delta = (r['mIoU'] - by_model[base][run]['mIoU']) * 100
                lines.append(f"| {data} | {run} | {name} | {r['mIoU']:.3f} | {delta:+.1f} pts | {r['oAcc']:.3f} | "
                             f"{r['mPrec']:.3f} | {r['mRec']:.3f} |")
    text = '\n'.join(lines) + '\n'
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'table.md').write_text(text)
    (args.out / 'rows.json').write_text(json.dumps(rows, indent=1, default=float))


if __name__ == '__main__':
    main()
