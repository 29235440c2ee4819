#!/usr/bin/env python3
"""Mutation testing with mutmut (`make mutate`; not part of CI): one bounded run per module group.

Each group names the files to mutate and the FEW test files that exercise them, so a run stays affordable on a
shared 2-core machine. A group runs in its own copy of the working tree (out/mutation/<group>/, so mutmut's
mutants/ folder and its progress stay out of the sources), niced, with one worker and a wall-clock budget;
mutmut resumes where it stopped on the next run (--fresh forgets earlier results: needed after test changes).
Results (killed / survived / no tests / timeout per file) go to out/mutation/summary.json and are printed;
docs/mutation.md records the figures and the survivors that matter.

    .venv/bin/python scripts/mutate.py                      # every group, MUTATE_MINUTES (default 20) each
    .venv/bin/python scripts/mutate.py params --minutes 5
    .venv/bin/python scripts/mutate.py trainer --only 'mpnet_model.train.trainer.xǁTrainerǁtry_resume*'
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / 'out' / 'mutation'

# group -> files to mutate, the test files run against them, tests left out (DDS in a forked mutmut worker hangs;
# multi-process runs cost minutes), and mutant-name globs run first.
GROUPS: dict[str, dict] = {
    'params': {
        'mutate': ['mpnet_ros/params.py'],
        'tests': ['tests/test_params.py', 'tests/test_params_values.py'],
        'deselect': ['tests/test_params.py::test_descriptors_declared_with_ranges'],
    },
    'trainer': {
        'mutate': ['mpnet_model/train/trainer.py'],
        'tests': ['tests/test_train.py'],
        'deselect': ['tests/test_train.py::test_ddp_two_cpu_processes_gloo'],
        # The resume / checkpoint / schedule / epoch-end code first: that is what the mutants hit.
        'focus': ['mpnet_model.train.trainer.x_rng_state*', 'mpnet_model.train.trainer.x_set_rng_state*',
                  'mpnet_model.train.trainer.x_learning_rate*', 'mpnet_model.train.trainer.x_bn_momentum*',
                  'mpnet_model.train.trainer.x_save_checkpoints*', 'mpnet_model.train.trainer.x_validate_epoch*',
                  'mpnet_model.train.trainer.x_record_epoch*', 'mpnet_model.train.trainer.xǁTrainerǁtry_resume*',
                  'mpnet_model.train.trainer.xǁTrainerǁprogress_state*', 'mpnet_model.train.trainer.xǁTrainerǁsave*',
                  'mpnet_model.train.trainer.xǁTrainerǁ_apply_schedule*', 'mpnet_model.train.trainer.xǁTrainerǁfit*'],
    },
    'infer': {
        'mutate': ['mpnet_model/infer/scene.py', 'mpnet_model/infer/export.py', 'mpnet_model/infer/meanshift.py',
                   'mpnet_model/infer/merging.py', 'mpnet_model/infer/trt_ops.py',
                   'mpnet_model/infer/backends/base.py', 'mpnet_model/infer/backends/onnx_backend.py',
                   'mpnet_model/infer/backends/torch_backend.py',
                   'mpnet_model/infer/backends/tensorrt_backend.py'],
        'tests': ['tests/test_scene.py', 'tests/test_golden.py', 'tests/test_model_values_flow.py',
                  'tests/test_export.py', 'tests/test_backends.py', 'tests/test_meanshift.py',
                  'tests/test_merging.py', 'tests/test_tensorrt.py'],
        'deselect': ['tests/test_model_values_flow.py::test_hop4_the_node_itself',
                     'tests/test_meanshift.py::test_matches_sklearn_4096',        # the 1k-point cases suffice
                     'tests/test_backends.py::test_default_config_batch1_agrees'],  # exports the paper-size model
        # The wiring first (scene, metadata, export), then the numerical kernels.
        'focus': ['mpnet_model.infer.scene.*', 'mpnet_model.infer.backends.base.*',
                  'mpnet_model.infer.backends.torch_backend.*', 'mpnet_model.infer.export.*'],
    },
}


def _tracked_files() -> list[str]:
    listed = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split('\n')
    return [name for name in listed if name and (REPO / name).is_file()]


def prepare(group: str) -> Path:
    """out/mutation/<group>/: the working tree's files (refreshed) plus a [tool.mutmut] section for the group.
    mutants/ and mutmut's progress inside it are kept between runs."""
    spec, work = GROUPS[group], OUT / group
    work.mkdir(parents=True, exist_ok=True)
    for name in _tracked_files():
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    config = (REPO / 'pyproject.toml').read_text()
    config += ('\n[tool.mutmut]\n'
               'source_paths = ["mpnet_model", "mpnet_ros"]\n'
               'also_copy = ["config", "launch", "resource", "scripts", "package.xml", "setup.py", '
               '"mpnet_model/assets"]\n'
               f'only_mutate = {json.dumps(spec["mutate"])}\n'
               f'pytest_add_cli_args_test_selection = {json.dumps(spec["tests"])}\n'
               f'pytest_add_cli_args = {json.dumps(["-q"] + [f"--deselect={t}" for t in spec.get("deselect", [])])}\n'
               # Help texts and parser set-up are not behaviour worth a mutant each.
               'do_not_mutate_patterns = ["help=", "ArgumentParser\\\\("]\n'
               'timeout_multiplier = 5.0\n'
               'use_git_change_detection = false\n')
    (work / 'pyproject.toml').write_text(config)
    return work


def run(group: str, minutes: float, only: list[str] | None) -> dict:
    work = prepare(group)
    env = dict(os.environ, MPNET_SHARED=os.environ.get('MPNET_SHARED', str(REPO.parent / 'shared')),
               OMP_NUM_THREADS='1', PYTHONDONTWRITEBYTECODE='1')
    mutmut = str(Path(sys.executable).with_name('mutmut'))
    names = only if only is not None else GROUPS[group].get('focus', [])
    deadline = time.monotonic() + minutes * 60
    for selection in ([names] if names else []) + [[]]:          # the focus first, then everything
        left = deadline - time.monotonic()
        if left < 30:
            break
        command = ['nice', '-n', '10', 'timeout', '--signal=INT', f'{int(left)}', mutmut, 'run', '--max-children',
                   '1', *selection]
        print(f'[{group}] {" ".join(command[5:])} (budget {left / 60:.0f} min)', flush=True)
        with open(work / 'mutmut.log', 'a') as log:
            subprocess.run(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        if only is not None:
            break
    return summarise(group, work, mutmut, env)


def summarise(group: str, work: Path, mutmut: str, env: dict) -> dict:
    """Per file: counts of each mutmut status, and the surviving mutant names."""
    listing = subprocess.run([mutmut, 'results', '--all', 'true'], cwd=work, env=env, capture_output=True,
                             text=True).stdout
    files: dict[str, dict] = {}
    for line in listing.splitlines():
        match = re.match(r'\s*([\w.ǁ]+__mutmut_\d+): (.+)$', line)
        if not match:
            continue
        name, status = match.group(1), match.group(2).strip()
        module = name.split('.x')[0] if '.x' in name else name.rsplit('.', 1)[0]
        entry = files.setdefault(module, {'statuses': {}, 'survivors': []})
        entry['statuses'][status] = entry['statuses'].get(status, 0) + 1
        if status == 'survived':
            entry['survivors'].append(name)
    return {'group': group, 'files': files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('groups', nargs='*', help=f'groups to run (default: all of {list(GROUPS)})')
    parser.add_argument('--minutes', type=float, default=float(os.environ.get('MUTATE_MINUTES', 20)),
                        help='wall-clock budget per group (mutmut continues where it stopped next time)')
    parser.add_argument('--only', action='append', help='mutant-name glob(s) to run instead of the group\'s list')
    parser.add_argument('--summary-only', action='store_true', help='do not run, only summarise earlier runs')
    parser.add_argument('--fresh', action='store_true',
                        help='forget earlier results (mutmut does not re-test survivors when only the tests changed)')
    args = parser.parse_args(argv)
    unknown = sorted(set(args.groups) - set(GROUPS))
    if unknown:
        parser.error(f'unknown group(s) {unknown}; choose from {list(GROUPS)}')
    summaries = {}
    summary_path = OUT / 'summary.json'
    if summary_path.is_file():
        summaries = json.loads(summary_path.read_text())
    for group in args.groups or list(GROUPS):
        if args.summary_only:
            work = OUT / group
            env = dict(os.environ)
            summaries[group] = summarise(group, work, str(Path(sys.executable).with_name('mutmut')), env)
        else:
            if args.fresh:
                shutil.rmtree(OUT / group / 'mutants', ignore_errors=True)
            summaries[group] = run(group, args.minutes, args.only)
        for module, entry in sorted(summaries[group]['files'].items()):
            counts = ', '.join(f'{k} {v}' for k, v in sorted(entry['statuses'].items()))
            print(f'[{group}] {module}: {counts}')
    OUT.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summaries, indent=1, ensure_ascii=False))
    print(f'summary: {summary_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
