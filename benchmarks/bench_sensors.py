"""Simulated-sensor benchmark: models side by side on held-out lidar and RGB-D frames (and the static hold-out).

Runs `mpnet-eval` for every model on config/eval_sim_lidar.yaml and config/eval_sim_rgbd.yaml (single frames and
5-frame windows), optionally on the static synthetic hold-out, and writes docs/results_sensors.md style tables
with each model's difference to the FIRST model (the baseline row: today's shipped model), plus pictures
(prediction vs ground truth) of one lidar frame, one lidar window and one RGB-D frame per model.

    python benchmarks/bench_sensors.py --out out/bench_sensors [--model NAME=path.pt ...] [--static] [--gravity]
    python benchmarks/bench_sensors.py --baseline old=runs/old.pt --model new=mpnet_model/assets/mpnet_synthetic.pt

Besides the summary table (with the over-segmentation metrics mFrag / mSplit), it writes per-class IoU and per
range band tables of the single frames (table.md).

Data first (the commands in the two eval configs). The machine was shared with other jobs: timings are not
reported, only metrics (which do not depend on load).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mpnet_model.default_model import DEFAULT_CHECKPOINT

CONFIGS = {'lidar': 'config/eval_sim_lidar.yaml', 'rgbd': 'config/eval_sim_rgbd.yaml'}
EXTRA_CONFIGS = {'tabletop': 'config/eval_sim_tabletop.yaml'}     # --tabletop: manipulation views (issue 22)


def run_eval(model: str, config: str, out: Path, windows: str, gravity: str = 'off', backend: str = 'torch',
             layout: str | None = None) -> dict:
    from mpnet_model.eval.evaluate import main as eval_main

    if not (out / 'summary.json').is_file():
        args = ['--checkpoint', model, '--config', config, '--out', str(out), '--backend', backend]
        if layout:
            args += ['--layout', layout]
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


def detail_tables(rows: dict, models: list[tuple[str, str]]) -> str:
    """Per-class IoU and per range band mIoU (oAcc) of the single frames, one row per data kind and model."""
    from mpnet_model.data.classes import S3DIS_CLASSES
    from mpnet_model.eval.frames import band_names

    single = [(data, by_model) for data, by_model in rows.items() if 'window 1' in next(iter(by_model.values()))]
    if not single:
        return ''
    names = S3DIS_CLASSES
    lines = ['', 'Per class IoU (single frames):', '', '| data, model | ' + ' | '.join(names) + ' |',
             '|---|' + '---|' * len(names)]
    for data, by_model in single:
        for name, _ in models:
            iou = by_model[name]['window 1']['iou']
            lines.append(f'| {data}, {name} | ' + ' | '.join('—' if v != v else f'{v:.2f}' for v in iou) + ' |')
    bands = band_names()
    lines += ['', 'By range (single frames, mIoU with oAcc in brackets):', '', '| data, model | ' + ' | '.join(bands)
              + ' |', '|---|' + '---|' * len(bands)]
    for data, by_model in single:
        for name, _ in models:
            got = by_model[name]['window 1']['range_bands']
            lines.append(f'| {data}, {name} | ' + ' | '.join(
                f"{got[b]['mIoU']:.3f} ({got[b]['oAcc']:.2f})" if b in got else '—' for b in bands) + ' |')
    return '\n'.join(lines) + '\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, default=Path('out/bench_sensors'))
    parser.add_argument('--baseline', default=f'shipped={DEFAULT_CHECKPOINT}', metavar='NAME=PATH',
                        help='the baseline row (default: the shipped model)')
    parser.add_argument('--model', action='append', default=[], metavar='NAME=PATH[,layout=L]',
                        help='more models after the baseline; layout=L evaluates with that block layout instead of '
                             'the default (docs/frame_layouts.md)')
    parser.add_argument('--windows', default='1,5')
    parser.add_argument('--static', action='store_true', help='also the static synthetic hold-out (Area 5)')
    parser.add_argument('--gravity', action='store_true', help='also each sensor run with --gravity-align auto')
    parser.add_argument('--tabletop', action='store_true', help='also the simulated manipulation views (Area 5)')
    parser.add_argument('--no-pictures', action='store_true')
    args = parser.parse_args()
    specs = [m.split('=', 1) for m in [args.baseline, *args.model]]
    if any(len(m) != 2 for m in specs):
        parser.error('models are given as NAME=PATH[,layout=L]')
    models, layouts = [], {}
    for name, rest in specs:
        path, _, option = rest.partition(',layout=')
        models.append((name, path))
        layouts[name] = option or None
    rows: dict[str, dict[str, dict]] = {}
    for name, path in models:
        layout = layouts[name]
        kinds = {**CONFIGS, **(EXTRA_CONFIGS if args.tabletop else {})}
        for kind, config in kinds.items():
            windows = '1' if kind in EXTRA_CONFIGS else args.windows       # 4-view manipulation sequences
            rows.setdefault(f'{kind}', {})[name] = run_eval(path, config, args.out / name / kind, windows,
                                                            layout=layout)
            if args.gravity:
                rows.setdefault(f'{kind}, gravity auto', {})[name] = run_eval(
                    path, config, args.out / name / f'{kind}_gravity', args.windows, 'auto', layout=layout)
        if args.static:
            rows.setdefault('static', {})[name] = {'window -': run_eval(path, 'config/train_synthetic.yaml',
                                                                         args.out / name / 'static', '',
                                                                         layout=layout)}
        if not args.no_pictures and layout is None:
            pictures(path, name, args.out)
    base = models[0][0]
    lines = [f'| data | run | model | mIoU | Δ mIoU vs {base} | oAcc | mPrec | mRec | mFrag | mSplit |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for data, by_model in rows.items():
        for run in by_model[base]:
            for name, _ in models:
                r = by_model[name][run]
                delta = (r['mIoU'] - by_model[base][run]['mIoU']) * 100
                lines.append(f"| {data} | {run} | {name} | {r['mIoU']:.3f} | {delta:+.1f} pts | {r['oAcc']:.3f} | "
                             f"{r['mPrec']:.3f} | {r['mRec']:.3f} | {r.get('mFrag', float('nan')):.2f} | "
                             f"{r.get('mSplit', float('nan')):.2f} |")
    text = '\n'.join(lines) + '\n' + detail_tables(rows, models)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'table.md').write_text(text)
    (args.out / 'rows.json').write_text(json.dumps(rows, indent=1, default=float))


if __name__ == '__main__':
    main()
