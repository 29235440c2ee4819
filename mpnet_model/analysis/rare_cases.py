"""Non-dominant classes and rare cases (§4.4, Figs. 6-7).

Rare cases: the `rare_fraction` (20 %) of ground-truth instances with the lowest best IoU under the reference
model (the baseline, as the paper uses vanilla ASIS); every row is then scored on that same set of instances
(`precision_on_subset`). On the synthetic benchmark the generator plants rare arrangements (stacked chairs, a
sofa in the middle of the room...) and lists them in each room's sidecar json: the report says how many of them
the baseline's rare set catches, and scores every row on the planted instances too.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from mpnet_model.analysis import AnalysisConfig
from mpnet_model.analysis.ablation import (
    RunResult,
    _json_safe,
    evaluation_rooms,
    format_percent,
    markdown_table,
    mean_std,
    row_runs,
    split_room_dirs,
)
from mpnet_model.data.room import load_room_npz
from mpnet_model.data.synthetic import META_FILENAME
from mpnet_model.eval.metrics import precision_on_subset, select_rare_cases
from mpnet_model.eval.report import TIERS
from mpnet_model.io.atomic import atomic_write_text
from mpnet_model.train.config import TrainConfig


def planted_rare_instances(room_dirs: list[Path], cached_rooms: list[Path]) -> dict[tuple[str, int], str]:
    """(room name, instance id) -> rare arrangement kind, for every instance the synthetic generator planted.

    Rooms without a sidecar (real datasets) contribute nothing. Instance ids are looked up by annotation name in
    the cached room (the loader's numbering), so they match the evaluation records.
    """
    planted: dict[tuple[str, int], str] = {}
    for room_dir, cached in zip(room_dirs, cached_rooms):
        meta_path = Path(room_dir) / META_FILENAME
        if not meta_path.is_file():
            continue
        try:
            meta = json.loads(meta_path.read_text())
            rare = {info['name']: info['rare'] for info in meta['instances'] if info.get('rare')}
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f'{meta_path}: cannot read the rare instances: {error}') from error
        if not rare:
            continue
        room = load_room_npz(cached)
        ids = {name: i for i, name in enumerate(room.instance_names)}
        missing = sorted(set(rare) - set(ids))
        if missing:
            raise ValueError(f'{meta_path}: rare instances {missing} are not annotations of room {room.name}')
        planted.update({(room.name, ids[name]): kind for name, kind in rare.items()})
    return planted


def subset_scores(result: RunResult, keys: list[tuple[str, int]], num_classes: int) -> dict:
    """precision_on_subset of one run, or NaNs for an empty subset."""
    if not keys:
        nan = np.full(num_classes, np.nan)
        return {'mPrec': float('nan'), 'mRec': float('nan'), 'precision': nan, 'recall': nan,
                'num_gt': np.zeros(num_classes, dtype=np.int64)}
    return precision_on_subset(result.records(), keys, num_classes)


def run_rare_cases(base: TrainConfig, acfg: AnalysisConfig, out_dir: str | Path, progress: bool = True
                   ) -> dict[str, Path]:
    """Train / evaluate the rows (and the reference row) as needed; write rare_cases.md and .json."""
    out_dir = Path(out_dir)
    rows = list(dict.fromkeys([acfg.rare_reference, *acfg.rows]))
    results = {row: row_runs(base, acfg, row, out_dir, progress) for row in rows}
    class_names = results[rows[0]][0].class_names
    num_classes = len(class_names)
    room_dirs = split_room_dirs(base, acfg)
    planted = planted_rare_instances(room_dirs, evaluation_rooms(base, acfg, progress=False))
    planted_keys = sorted(planted)

    per_seed = []
    for seed_index, seed in enumerate(acfg.seeds):
        reference = results[acfg.rare_reference][seed_index]
        gt = reference.records().gt
        rare_keys = select_rare_cases(gt, acfg.rare_fraction, per_class=acfg.rare_per_class)
        caught = [k for k in rare_keys if k in planted]
        scores = {row: {'rare': subset_scores(results[row][seed_index], rare_keys, num_classes),
                        'planted': subset_scores(results[row][seed_index], planted_keys, num_classes)}
                  for row in rows}
        per_seed.append({'seed': seed, 'reference': reference.spec.name, 'num_gt': len(gt),
                         'rare_keys': rare_keys, 'caught': caught, 'scores': scores,
                         'rare_classes': Counter(class_names[c] for c in gt.sem[gt.key_mask(rare_keys)].tolist())})

    def over_seeds(row: str, subset: str, key: str, index: int | None = None) -> tuple[float, float]:
        values = [s['scores'][row][subset][key] if index is None else s['scores'][row][subset][key][index]
                  for s in per_seed]
        return mean_std(values)

    def over_seeds_summary(row: str, key: str) -> tuple[float, float]:
        return mean_std([r.summary[key] for r in results[row]])

    main_rows = [[row] + [format_percent(*over_seeds(row, 'rare', k)) for k in ('mPrec', 'mRec')]
                 + [format_percent(*over_seeds_summary(row, k)) for k in ('mPrec', 'mRec')]
                 + ([format_percent(*over_seeds(row, 'planted', k)) for k in ('mPrec', 'mRec')] if planted else [])
                 for row in rows]
    header = ['row', 'rare mPrec', 'rare mRec', 'all mPrec', 'all mRec'] + (
        ['planted mPrec', 'planted mRec'] if planted else [])
    rare_classes = sorted({c for s in per_seed for c in s['rare_classes']}, key=class_names.index)
    class_rows = [[row] + [format_percent(*over_seeds(row, 'rare', 'precision', class_names.index(c)))
                           for c in rare_classes] for row in rows]
    tier_rows = []
    for row in rows:
        tiers = {m: [r.tiers(m) for r in results[row]] for m in ('precision', 'recall')}
        tier_rows.append([row] + [format_percent(*mean_std([t[tier] for t in tiers[m]]))
                                  for m in ('precision', 'recall') for tier in TIERS])

    first = per_seed[0]
    lines = [
        '# Non-dominant classes and rare cases (paper §4.4)', '',
        f'Rare cases: the {100 * acfg.rare_fraction:.0f} % of ground-truth instances of the {acfg.split} split with '
        f'the lowest best IoU under `{acfg.rare_reference}`' + (' (within each class)' if acfg.rare_per_class else '')
        + f'; seed {first["seed"]}: {len(first["rare_keys"])} of {first["num_gt"]} instances ('
        + ', '.join(f'{c}: {n}' for c, n in sorted(first['rare_classes'].items(), key=lambda kv: -kv[1])) + ').',
        'Precision on the set: predictions whose best same-class match is a rare instance; recall: rare instances '
        'matched at IoU >= 0.5. Metrics in %' + (', mean ± std over seeds' if len(per_seed) > 1 else '') + '.', '',
        markdown_table(header, main_rows), '',
        '## Precision on the rare cases per class (Fig. 7)', '',
        markdown_table(['row', *rare_classes], class_rows) if rare_classes else '(no rare case)', '',
        '## Dominance tiers (Fig. 6)', '',
        markdown_table(['row', *[f'{m} {t}' for m in ('mPrec', 'mRec') for t in TIERS]], tier_rows), '',
        '## Planted rare arrangements (synthetic benchmark)', '']
    if planted:
        kinds = Counter(planted.values())
        for s in per_seed:
            caught_kinds = Counter(planted[k] for k in s['caught'])
            share = len(s['caught']) / len(planted)
            lines.append(f'- seed {s["seed"]}: {len(s["caught"])} of {len(planted)} planted rare instances '
                         f'({100 * share:.0f} %) fall in the rare set (a random set of the same size would hold '
                         f'{100 * len(s["rare_keys"]) / max(s["num_gt"], 1):.0f} % of them); by kind: '
                         + ', '.join(f'{k} {caught_kinds.get(k, 0)}/{n}' for k, n in sorted(kinds.items())))
    else:
        lines.append('No planted rare instance in the evaluated rooms (no synthetic sidecar, or none planted).')
    table = atomic_write_text(out_dir / 'rare_cases.md', '\n'.join(lines + ['']))

    def scores_json(scores: dict) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in scores.items()}

    data = {'class_names': class_names, 'fraction': acfg.rare_fraction, 'reference': acfg.rare_reference,
            'planted': [[room, ins, kind] for (room, ins), kind in sorted(planted.items())],
            'seeds': [{'seed': s['seed'], 'reference_run': s['reference'], 'num_gt': s['num_gt'],
                       'rare_cases': [list(k) for k in s['rare_keys']], 'planted_in_rare_set': [list(k) for k in
                                                                                   s['caught']],
                       'scores': {row: {subset: scores_json(v) for subset, v in by_subset.items()}
                                  for row, by_subset in s['scores'].items()}} for s in per_seed]}
    raw = atomic_write_text(out_dir / 'rare_cases.json', json.dumps(_json_safe(data), indent=1, default=_plain))
    return {'table': table, 'json': raw}


def _plain(value):
    """JSON fallback for numpy scalars."""
    if isinstance(value, np.generic):
        item = value.item()
        return None if isinstance(item, float) and math.isnan(item) else item
    raise TypeError(f'not JSON serialisable: {type(value).__name__}')
