"""`mpnet-analyse`: the paper's analyses, one command each (docs/analyses.md).

  mpnet-analyse ablation  --config config/analysis_synthetic.yaml --out runs/analysis   # Table 1 (+ tiers)
  mpnet-analyse sweep     ...   # memory size Mc vs mPrec / mRec (table + PNG)
  mpnet-analyse scale     ...   # memory_scale vs addressing entropy, spread of the read feature, metrics
  mpnet-analyse rare      ...   # dominance tiers, rare cases, planted rare arrangements
  mpnet-analyse visualise ...   # Fig. 3 memory slots, Fig. 4 t-SNE, Fig. 5 training curves (PNG)
  mpnet-analyse all       ...

Runs are shared and resumable: re-running a command skips every trained and evaluated run under <out>/runs/.
Override any value with --set, e.g. --set optim.epochs=5 --set analysis.seeds=[0,1] --set data.root=/data/s3dis.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mpnet_model.analysis import load_analysis_config
from mpnet_model.config import ConfigError
from mpnet_model.model.checkpoint import CheckpointError

COMMANDS = ('ablation', 'sweep', 'scale', 'rare', 'visualise', 'all')


def run_command(command: str, config: str | None, out: str | Path, overrides: list[str] = (),
                progress: bool = True) -> dict[str, Path]:
    """Run one analysis (or all) and return the written files by name."""
    from mpnet_model.analysis.ablation import run_ablation
    from mpnet_model.analysis.memory_addressing import run_scale_sweep
    from mpnet_model.analysis.memory_sweep import run_memory_sweep
    from mpnet_model.analysis.rare_cases import run_rare_cases
    from mpnet_model.analysis.visualise import run_visualise

    if command not in COMMANDS:
        raise ValueError(f'unknown analysis {command!r}: choose one of {COMMANDS}')
    out = Path(out)
    base, acfg = load_analysis_config(config, out, list(overrides))
    steps = {'ablation': run_ablation, 'sweep': run_memory_sweep, 'scale': run_scale_sweep, 'rare': run_rare_cases,
             'visualise': run_visualise}
    written: dict[str, Path] = {}
    for name in (steps if command == 'all' else [command]):
        written.update({f'{name}.{key}': path for key, path in steps[name](base, acfg, out, progress).items()})
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='mpnet-analyse', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('command', choices=COMMANDS)
    parser.add_argument('--config', help='analysis YAML (config/analysis_synthetic.yaml)')
    parser.add_argument('--out', required=True, help='output folder (runs, tables, figures)')
    parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='SECTION.KEY=VALUE',
                        help='override a config value (repeatable); analysis.* keys go to the analysis section')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    try:
        written = run_command(args.command, args.config, args.out, args.overrides, progress=not args.quiet)
    except (ConfigError, FileNotFoundError, CheckpointError, ValueError, KeyError) as error:
        print(f'mpnet-analyse: error: {error}', file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f'{name}: {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
