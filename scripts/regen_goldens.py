#!/usr/bin/env python3
"""Regenerate the golden real-frame outputs (tests/golden/*.npz) DELIBERATELY, then review the diff.

    .venv/bin/python scripts/regen_goldens.py            # all cases
    .venv/bin/python scripts/regen_goldens.py office_patch

Run this only when the model or the default frame path is meant to change its answers (a new shipped model, a
new block layout): it prints how the new outputs compare with the old ones, so the change can be judged and
stated in the commit. A refactor that should not change results must pass tests/test_golden.py instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))

from golden_cases import CASES, golden_path  # noqa: E402

from mpnet_model.eval.golden import GoldenReference, compare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('cases', nargs='*', help=f'cases to regenerate (default: all of {list(CASES)})')
    args = parser.parse_args(argv)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f'unknown case(s) {unknown}; choose from {list(CASES)}')
    for case in args.cases or list(CASES):
        reference = CASES[case]()
        path = golden_path(case)
        if path.is_file():
            report = compare(GoldenReference.load(path), reference.int_labels, reference.instances)
            print(f'{case}: new outputs against the previous reference: {report.summary()}')
        reference.info['case'] = case
        reference.save(path)
        values, counts = np.unique(reference.labels, return_counts=True)
        print(f'{case}: wrote {path} ({path.stat().st_size / 1024:.0f} KiB, {reference.labels.size} points, '
              f'{reference.num_instances} instances, label counts {dict(zip(values.tolist(), counts.tolist()))})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
