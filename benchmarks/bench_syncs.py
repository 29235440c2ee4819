"""Host-device syncs of the frame path per frame and stage (issue 25), before and after, in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_syncs.py [--before 7c0cffa] [--speed-rounds 3]
    python benchmarks/bench_syncs.py --device cuda --skip-before --skip-speed --out /tmp/s.md   (GPU session)
    python benchmarks/bench_syncs.py --skip-before --skip-speed --range 6 --out /tmp/s.md         (dry run)

1. Sync count (CPU): `SceneSegmenter.segment` on the 15 m crop of Ouster scan 0 with the GPU strategies forced on
   CPU tensors (torch sampler, torch FPS, device mean shift / merging / nearest neighbours;
   `mpnet_model.infer.syncs.frame_syncs`), the second frame counted, per stage and kind. "Before" is the code of
   commit ``--before`` (default 7c0cffa, main before issue 25), unpacked with `git archive` into a temporary
   folder and run in a subprocess with the SAME counter (this checkout's syncs.py, loaded by path); "after" is
   this checkout, the same way. Both answers are compared point by point.
2. CPU speed of the default frame path (ONNX Runtime, numpy sampler, CPU strategies, 1 thread) on the 15 m crops
   of the 3 Ouster scans, before and after in ONE process (the before tree's package copied under another name),
   frames alternating (a load change hits both): median ms per stage, the p50 ratio; the answers (labels,
   instances, scores) of every frame compared array by array.
3. ``--device cuda`` (a GPU session): the real CUDA path of this checkout (torch backend), its second frame
   counted by the same counter and by torch's own sync debug mode (`torch.cuda.set_sync_debug_mode('warn')`:
   one warning per synchronising CUDA call), per stage.

Writes benchmarks/results/syncs.md (``--out`` elsewhere).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SYNCS = ROOT / 'mpnet_model' / 'infer' / 'syncs.py'
RESULTS = ROOT / 'benchmarks' / 'results'
BEFORE = '7c0cffa'
BOUND = 50          # the target per frame (tests/test_syncs.py asserts it)


def load_counter():
    """This checkout's syncs.py as a module of its own name (works next to an older `mpnet_model`)."""
    spec = importlib.util.spec_from_file_location('frame_sync_counter', SYNCS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digest(*arrays: np.ndarray) -> str:
    sha = hashlib.sha256()
    for array in arrays:
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()[:16]


# -- workers (run in a subprocess whose sys.path starts with the tree under test) -----------------------------------

def worker_count(args) -> dict:
    import torch

    from benchmarks.sample_frames import ouster_crop
    counter_module = load_counter()
    torch.set_num_threads(args.threads)
    xyz, intensity = ouster_crop(0, args.range)
    segmenter = counter_module.gpu_like_segmenter(batch_size=64)
    counter_module.frame_syncs(segmenter, xyz, intensity)                      # first frame (not counted)
    start = time.perf_counter()
    counter, result = counter_module.frame_syncs(segmenter, xyz, intensity, trace=True)
    seconds = time.perf_counter() - start
    # The answer to compare across trees: with the k-d tree for the unsampled points (older code has no switch to
    # the brute-force search, so it keeps the k-d tree on CPU tensors).
    import mpnet_model.infer.scene as scene
    comparable = result
    if hasattr(scene, '_cpu_strategy'):
        comparable = counter_module.frame_syncs(segmenter, xyz, intensity, nearest=False)[1]
    return {'stages': counter.per_stage(), 'kinds': {s: dict(k) for s, k in counter.counts.items()},
            'sites': {s: dict(c.most_common(12)) for s, c in counter.sites.items()}, 'seconds': seconds,
            'points': int(len(xyz)), 'blocks': int(result.num_blocks),
            'answer': digest(comparable.labels, comparable.instances, comparable.scores)}


def worker_cuda(args) -> dict:
    """The real CUDA path of this checkout: the counter, and torch's sync debug mode, on the second frame."""
    import warnings

    import torch

    from benchmarks.sample_frames import ouster_crop
    from mpnet_model.infer.scene import SceneSegmenter
    counter_module = load_counter()
    xyz, intensity = ouster_crop(0, args.range)
    segmenter = SceneSegmenter.from_config('torch', '', device='cuda')
    segmenter.segment(xyz, None, intensity)                                   # warm-up: graphs, allocator, cuDNN
    counter = counter_module.SyncCounter(trace=True)
    flagged: dict[str, int] = {}
    with counter_module.stage_attribution(counter, emulate_cuda=False), counter, warnings.catch_warnings():
        warnings.simplefilter('always')
        warnings.showwarning = lambda message, *rest: flagged.__setitem__(
            counter.stage, flagged.get(counter.stage, 0) + ('synchroniz' in str(message)))
        torch.cuda.set_sync_debug_mode('warn')
        try:
            result = segmenter.segment(xyz, None, intensity)
        finally:
            torch.cuda.set_sync_debug_mode('default')
    return {'stages': counter.per_stage(), 'kinds': {s: dict(k) for s, k in counter.counts.items()},
            'sites': {s: dict(c.most_common(12)) for s, c in counter.sites.items()}, 'debug_mode': flagged,
            'timings': result.timings, 'device': torch.cuda.get_device_name(), 'points': int(len(xyz))}


WORKERS = {'count': worker_count, 'cuda': worker_cuda}


def run_worker(tree: Path, task: str, args, env_extra: dict | None = None) -> dict:
    """This script's worker `task` in a fresh interpreter importing `mpnet_model` from `tree`."""
    with tempfile.NamedTemporaryFile(suffix='.json', delete=False) as handle:
        out = Path(handle.name)
    path = os.pathsep.join([str(tree), str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])])
    env = {**os.environ, 'PYTHONPATH': path, **(env_extra or {})}
    env.setdefault('MPNET_SHARED_DATA', str(shared_data()))
    command = [sys.executable, str(Path(__file__).resolve()), '--worker', task, '--tree', str(tree), '--json',
               str(out), '--range', str(args.range), '--threads', str(args.threads)]
    subprocess.run(command, cwd=tree, env=env, check=True)
    try:
        return json.loads(out.read_text())
    finally:
        out.unlink()


def shared_data() -> Path:
    from benchmarks.sample_frames import shared_data as data
    return data()


def unpack(ref: str, folder: Path) -> Path:
    """The tree of commit `ref` (tracked files only) in `folder`, without touching this checkout's git state."""
    archive = folder / 'tree.tar'
    with archive.open('wb') as stream:
        subprocess.run(['git', 'archive', '--format=tar', ref], cwd=ROOT, stdout=stream, check=True)
    target = folder / f'tree-{ref}'
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter='data')
    archive.unlink()
    return target


def renamed_package(tree: Path, folder: Path, name: str = 'mpnet_model_before') -> str:
    """A copy of `tree`'s mpnet_model importable as `name` next to this checkout's (every `mpnet_model` word in its
    sources renamed), so both run in ONE process and share the machine's load frame by frame."""
    import re
    import shutil

    target = folder / 'packages' / name
    shutil.copytree(tree / 'mpnet_model', target)
    for source in target.rglob('*.py'):
        source.write_text(re.sub(r'\bmpnet_model\b', name, source.read_text()))
    sys.path.insert(0, str(folder / 'packages'))
    return name


def speed_pair(before_tree: Path, folder: Path, args) -> dict:
    """The default CPU frame path of both trees in one process, frames interleaved (before, after, after, before,
    ...): per-stage timings and the answers of every frame compared array by array."""
    import importlib

    import torch

    from benchmarks.bench_frame import ouster_crops
    from mpnet_model.infer.scene import SceneSegmenter

    torch.set_num_threads(args.threads)
    old = importlib.import_module(renamed_package(before_tree, folder) + '.infer.scene')
    options = {'backend_options': {'intra_op_threads': args.threads}}
    segmenters = {'before': old.SceneSegmenter.from_config('onnxruntime', '', **options),
                  'after': SceneSegmenter.from_config('onnxruntime', '', **options)}
    crops = ouster_crops(args.range)
    for segmenter in segmenters.values():
        segmenter.segment(crops[0][0], None, crops[0][1])                    # warm-up
    timings = {name: [] for name in segmenters}
    identical = True
    for repeat in range(args.speed_rounds):
        for index, (xyz, intensity) in enumerate(crops):
            names = list(segmenters) if (repeat * len(crops) + index) % 2 == 0 else list(segmenters)[::-1]
            results = {}
            for name in names:
                results[name] = segmenters[name].segment(xyz, None, intensity)
                timings[name].append(results[name].timings)
            identical &= all(np.array_equal(getattr(results['before'], key), getattr(results['after'], key))
                             for key in ('labels', 'instances', 'scores'))
            print(f'speed repeat {repeat} scan {index}: ' + ', '.join(
                f'{name} {results[name].timings["total"]:.0f} ms' for name in names), flush=True)
    return {'timings': timings, 'identical': bool(identical), 'frames': len(crops) * args.speed_rounds}


STAGE_ORDER = ('blocks', 'inference', 'meanshift', 'merging', 'projection', 'output', 'timer')


def sync_table(columns: dict[str, dict]) -> list[str]:
    names = list(columns)
    lines = ['| stage | ' + ' | '.join(names) + ' |', '|---' * (len(names) + 1) + '|']
    stages = list(STAGE_ORDER) + sorted({s for c in columns.values() for s in c['stages']} - set(STAGE_ORDER))
    for stage in stages:
        lines.append(f'| {stage} | ' + ' | '.join(str(columns[n]['stages'].get(stage, 0)) for n in names) + ' |')
    lines.append('| **total** | ' + ' | '.join(f'**{sum(columns[n]["stages"].values())}**' for n in names) + ' |')
    return lines


def kinds_line(result: dict) -> str:
    totals: dict[str, int] = {}
    for kinds in result['kinds'].values():
        for kind, number in kinds.items():
            totals[kind] = totals.get(kind, 0) + number
    return ', '.join(f'{kind} {number}' for kind, number in sorted(totals.items(), key=lambda item: -item[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--before', default=BEFORE, help='commit of the "before" code (git archive)')
    parser.add_argument('--skip-before', action='store_true', help='count this checkout only (no git needed)')
    parser.add_argument('--skip-speed', action='store_true', help='no CPU speed comparison')
    parser.add_argument('--skip-count', action='store_true', help='no sync count on the CPU')
    parser.add_argument('--speed-rounds', type=int, default=3, help='passes over the 3 scans, before/after alternating')
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'),
                        help="cuda: also count the real CUDA path (a GPU session)")
    parser.add_argument('--range', type=float, default=15.0, help='crop radius [m]')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', type=Path, default=RESULTS / 'syncs.md')
    parser.add_argument('--worker', choices=tuple(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument('--tree', type=Path, help=argparse.SUPPRESS)
    parser.add_argument('--json', type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        import mpnet_model
        if not Path(mpnet_model.__file__).resolve().is_relative_to(args.tree.resolve()):
            raise SystemExit(f'bench_syncs: mpnet_model imported from {mpnet_model.__file__}, not from {args.tree}')
        args.json.write_text(json.dumps(WORKERS[args.worker](args)))
        return 0
    sys.path.insert(0, str(ROOT))                     # (not in the workers: they import their own tree)
    from benchmarks.bench_frame import machine_note
    from mpnet_model.io.atomic import atomic_write_text

    lines = ['# Host-device syncs of the frame path per frame (issue 25)', '']
    with tempfile.TemporaryDirectory() as folder:
        trees = {} if args.skip_before else {f'before ({args.before})': unpack(args.before, Path(folder))}
        trees['after (this checkout)'] = ROOT
        if not args.skip_count and (args.device == 'cpu' or not args.skip_before):
            counts = {}
            for name, tree in trees.items():
                print(f'counting syncs: {name}', flush=True)
                counts[name] = run_worker(tree, 'count', args)
            after = counts['after (this checkout)']
            lines += [f'Counted on the CPU ({machine_note(args.threads)}) with the GPU strategies forced (torch '
                      'sampler, torch FPS, device mean shift / merging / nearest neighbours; '
                      '`mpnet_model.infer.syncs.frame_syncs`): the second frame of the '
                      f'{args.range:g} m crop of Ouster scan 0 ({after["points"]} points, {after["blocks"]} blocks, '
                      'layout adaptive), shipped model, torch backend. Each column is one tree run with the same '
                      'counter. Syncs per stage:', '', *sync_table(counts), '']
            lines += [f'- {name}: {kinds_line(result)}' for name, result in counts.items()]
            if len(counts) == 2:
                before = counts[next(iter(counts))]
                same = before['answer'] == after['answer']
                lines += ['', 'Answers of the forced GPU path (the unsampled points by k-d tree in both, as the '
                          'code before has no switch to the brute-force search), before vs after: '
                          f'{"identical (labels, instances, scores)" if same else "DIFFERENT"}.']
            total = sum(after['stages'].values())
            lines += ['', f'**After: {total} syncs per frame (bound {BOUND}: '
                      f'{"met" if total <= BOUND else "NOT met"}).**', '',
                      'Where they are (after, file:line of the caller):', '']
            for stage, sites in after['sites'].items():
                lines.append(f'- {stage}: ' + ', '.join(f'{site} x{number}' for site, number in sites.items()))
            lines.append('')
        if not args.skip_speed and len(trees) == 2:
            speed = speed_pair(trees[next(iter(trees))], Path(folder), args)
            stages = ('blocks', 'inference', 'meanshift', 'merging', 'projection', 'total')
            median = {name: {stage: float(np.median([t.get(stage, 0.0) for t in rows])) for stage in stages}
                      for name, rows in speed['timings'].items()}
            lines += ['## CPU speed of the default frame path, before vs after', '',
                      f'Machine: {machine_note(args.threads)}. ONNX Runtime, numpy sampler, CPU strategies (the '
                      f'default CPU path); the {args.range:g} m crops of the 3 Ouster scans x {args.speed_rounds}, '
                      f'{speed["frames"]} frames per tree. Both trees in ONE process (the before tree\'s package '
                      'imported under another name), frames alternating before/after, so the load hits both; '
                      'warm-up frame not timed. Median ms per stage:', '',
                      '| tree | ' + ' | '.join(stages) + ' |', '|---' * (len(stages) + 1) + '|']
            for name, values in median.items():
                lines.append(f'| {name} | ' + ' | '.join(f'{values[stage]:.0f}' for stage in stages) + ' |')
            ratio = median['after']['total'] / median['before']['total']
            lines += ['', f'**p50 after / before: {ratio:.3f}** (below 1: faster). Answers (labels, instances, '
                      f'scores of every frame): {"identical" if speed["identical"] else "DIFFERENT"}.', '']
        if args.device == 'cuda':
            result = run_worker(ROOT, 'cuda', args)
            debug = result['debug_mode']
            lines += [f'## The CUDA path ({result["device"]})', '',
                      f'Torch backend on CUDA, fp32, second frame of the {args.range:g} m crop of Ouster scan 0 '
                      f'({result["points"]} points). "counter": this checkout\'s counter on the real CUDA tensors; '
                      '"sync debug": warnings of `torch.cuda.set_sync_debug_mode(\'warn\')`, per stage.', '',
                      '| stage | counter | sync debug |', '|---|---|---|']
            for stage in STAGE_ORDER:
                lines.append(f'| {stage} | {result["stages"].get(stage, 0)} | {debug.get(stage, 0)} |')
            lines += [f'| **total** | **{sum(result["stages"].values())}** | **{sum(debug.values())}** |', '',
                      'Stage times (CUDA events, ms): ' + ', '.join(f'{k} {v:.1f}' for k, v in
                                                                   result['timings'].items()), '']
    report = '\n'.join(lines) + '\n'
    print(report)
    atomic_write_text(args.out, report)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
