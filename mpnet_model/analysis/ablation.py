"""Table 1 of the paper (§4.3): train every ablation row with the same budget and seeds, evaluate each on whole
rooms, and tabulate mPrec / mRec, semantic mIoU, mCov / mWCov and per-tier mPrec / mRec.

Also the run machinery shared by the other analyses: one folder per trained model,
`<out>/runs/<row>-mc<Mc>-seed<s>/` (last.pt, best.pt, tb/, eval/), so the memory sweep and the ablation share the
run whose settings coincide, and every analysis resumes: a run whose `eval/analysis_eval.json` exists is done; a
run with a `last.pt` continues training from there.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpnet_model.analysis import AnalysisConfig
from mpnet_model.config import ABLATIONS
from mpnet_model.eval.metrics import InstanceEvaluationRecords, InstanceRecords
from mpnet_model.eval.report import TIERS, assign_tiers, tier_means, tier_shares
from mpnet_model.io.atomic import atomic_write_text
from mpnet_model.train.config import TrainConfig

log = logging.getLogger(__name__)

EVAL_MARKER = 'analysis_eval.json'
TUNED_EVAL = 'eval_tuned'         # the evaluation with post-processing tuned on the validation rooms
PER_CLASS_KEYS = {'semantic': ('iou', 'acc'),
                  'instance': ('precision', 'recall', 'cov', 'wcov', 'fragments', 'split')}


def _json_safe(value):
    """NaN -> None so the files are strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _nan(value) -> float:
    return float('nan') if value is None else float(value)


# ---------------------------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class RunSpec:
    row: str               # Table-1 row (ABLATIONS key)
    mem_per_class: int     # Mc
    seed: int
    overrides: tuple[tuple[str, Any], ...] = ()   # further model-config values, e.g. (('memory_scale', 5.0),)

    @property
    def name(self) -> str:
        suffix = ''.join(f'-{key}{value:g}' if isinstance(value, float) else f'-{key}{value}'
                         for key, value in self.overrides)
        return f'{self.row}-mc{self.mem_per_class}-seed{self.seed}{suffix}'


@dataclass
class RunResult:
    """The evaluation of one trained run as stored in `eval/analysis_eval.json` (+ the per-instance records)."""
    spec: RunSpec
    folder: Path
    summary: dict[str, float]                  # oAcc, mAcc, mIoU, mCov, mWCov, mPrec, mRec
    per_class: dict[str, np.ndarray]           # 'instance.precision', 'semantic.iou', ... (C,)
    class_shares: list[float]                  # training-set point share per class (for the tiers)
    class_names: list[str]
    eval_name: str = 'eval'                    # 'eval' (ASIS's fixed post-processing) or TUNED_EVAL
    postprocess: dict[str, float] | None = None  # bandwidth and size fraction the evaluation used

    @property
    def checkpoint(self) -> Path:
        return self.folder / 'best.pt'

    def records(self) -> InstanceEvaluationRecords:
        folder = self.folder / self.eval_name
        return InstanceEvaluationRecords(gt=InstanceRecords.load(str(folder / 'gt_instances.npz')),
                                         pred=InstanceRecords.load(str(folder / 'pred_instances.npz')))

    def tiers(self, metric: str) -> dict[str, float]:
        """Mean of a per-class instance metric ('precision' | 'recall') in each dominance tier."""
        return tier_means(self.per_class[f'instance.{metric}'], self.class_shares)

    @classmethod
    def load(cls, spec: RunSpec, folder: Path, eval_name: str = 'eval') -> RunResult:
        path = folder / eval_name / EVAL_MARKER
        try:
            data = json.loads(path.read_text())
            return cls(spec, folder, {k: _nan(v) for k, v in data['summary'].items()},
                       {k: np.array([_nan(x) for x in v]) for k, v in data['per_class'].items()},
                       list(data['class_shares']), list(data['class_names']), eval_name, data.get('postprocess'))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f'cannot read the evaluation of run {spec.name} from {path}: {error}; delete the file '
                             'to evaluate the run again') from error


def run_config(base: TrainConfig, spec: RunSpec, out_dir: Path) -> TrainConfig:
    """The base config with the row's switches, Mc and seed applied, training into the run's folder."""
    model = base.model.replace(mem_per_class=spec.mem_per_class, **{**ABLATIONS[spec.row], **dict(spec.overrides)})
    run = dataclasses.replace(base.run, out_dir=str(out_dir / 'runs' / spec.name), seed=spec.seed)
    return dataclasses.replace(base, model=model, run=run, ablation=spec.row)


def ensure_dataset(base: TrainConfig, acfg: AnalysisConfig, progress: bool = True) -> None:
    """Generate the synthetic benchmark into data.root when asked for and not there yet."""
    root = Path(base.data.root)
    if base.data.dataset != 'synthetic' or any(root.glob('Area_*')):
        return
    if not acfg.synthetic.generate:
        raise FileNotFoundError(f'data.root={str(root)!r} holds no Area_* folder and analysis.synthetic.generate '
                                'is false')
    from mpnet_model.data.synthetic import generate_dataset

    log.info('generating the synthetic benchmark into %s', root)
    generate_dataset(root, areas=acfg.synthetic.areas, seed=acfg.synthetic.seed, density=acfg.synthetic.density,
                     rare_prob=acfg.synthetic.rare_prob, progress=progress)


def evaluation_rooms(base: TrainConfig, acfg: AnalysisConfig, progress: bool = True) -> list[Path]:
    """Cached (.npz) rooms of the evaluated split (`analysis.split`), in the split's order."""
    from mpnet_model.data.dataset import build_cache

    d = base.data
    split = d.split()
    room_dirs = getattr(split, acfg.split)
    if not room_dirs:
        raise FileNotFoundError(f'the {acfg.split} split of {d.root} holds no rooms (data.test_area='
                                f'{d.test_area}, data.fold={d.fold})')
    return build_cache(room_dirs, d.cache_dir, split.loader, progress=progress)


def split_room_dirs(base: TrainConfig, acfg: AnalysisConfig) -> list[Path]:
    return list(getattr(base.data.split(), acfg.split))


def train_run(cfg: TrainConfig, acfg: AnalysisConfig, progress: bool = True) -> Path:
    """Train (or resume) one run; the trainer logs per-class block-level instance precision / recall every
    validation (`val/ins_prec/<class>`, `val/ins_rec/<class>`) for the Fig. 5 curves."""
    from mpnet_model.train.cli import train

    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, curve_blocks=acfg.curve_val_blocks))
    return train(cfg, progress).best_path


def evaluate_run(spec: RunSpec, folder: Path, rooms: list[Path], acfg: AnalysisConfig, device: str,
                 progress: bool = True, instance_sizes: list[float] | None = None, eval_name: str = 'eval',
                 bandwidth: float | None = None, fraction: float | None = None) -> RunResult:
    """Whole-room evaluation of `folder/best.pt` (the path the robot runs); writes `eval_name`/ and the marker last.

    Mean shift at `bandwidth` (default `analysis.bandwidth`, ASIS's 0.6); predicted instances under `fraction`
    (default ASIS's 0.25) x the training set's mean instance size of their class are dropped; the sizes come from
    the checkpoint, else from `instance_sizes`."""
    from mpnet_model.data.room import load_room_npz
    from mpnet_model.eval.evaluate import ASIS_MIN_INSTANCE_FRACTION, class_min_points, evaluate_rooms, write_evaluation
    from mpnet_model.infer.scene import SceneSegmenter
    from mpnet_model.model.checkpoint import read_checkpoint

    checkpoint = folder / 'best.pt'
    extra = read_checkpoint(checkpoint)['extra']
    sizes = extra.get('class_mean_instance_points', instance_sizes)
    bandwidth = acfg.bandwidth if bandwidth is None else float(bandwidth)
    fraction = ASIS_MIN_INSTANCE_FRACTION if fraction is None else float(fraction)
    segmenter = SceneSegmenter.from_config('torch', checkpoint, device=device, batch_size=acfg.eval_batch_size,
                                           bandwidth=bandwidth, min_instance_points=acfg.min_instance_points,
                                           class_min_points=class_min_points(sizes, fraction))  # geometry: checkpoint's
    shares = extra.get('class_shares')
    evaluation = evaluate_rooms(segmenter, (load_room_npz(p) for p in rooms), progress=progress)
    if shares is None:
        shares = evaluation.semantic['gt_points'].tolist()
    class_names = list(segmenter.class_names)
    eval_dir = folder / eval_name
    write_evaluation(evaluation, class_names, shares, eval_dir, f'{spec.name} on {acfg.split} ({eval_name})')
    per_class = {f'{section}.{key}': np.asarray(getattr(evaluation, section)[key], dtype=np.float64)
                 for section, keys in PER_CLASS_KEYS.items() for key in keys}
    payload = {'run': spec.name, 'row': spec.row, 'mem_per_class': spec.mem_per_class, 'seed': spec.seed,
               'rooms': evaluation.rooms, 'summary': evaluation.summary(), 'class_names': class_names,
               'class_shares': [float(s) for s in shares],
               'per_class': {k: v.tolist() for k, v in per_class.items()},
               'postprocess': {'bandwidth': bandwidth, 'min_instance_fraction': fraction}}
    atomic_write_text(eval_dir / EVAL_MARKER, json.dumps(_json_safe(payload), indent=1))
    return RunResult.load(spec, folder, eval_name)


def tune_run(result: RunResult, base: TrainConfig, acfg: AnalysisConfig, progress: bool = True) -> RunResult:
    """The run evaluated again with bandwidth and size fraction chosen on the validation rooms
    (`mpnet_model.eval.tune`); the chosen values are stored in its best.pt, the report goes to eval_tuned/."""
    from mpnet_model.data.dataset import build_cache
    from mpnet_model.data.room import load_room_npz
    from mpnet_model.eval.tune import tune_postprocessing
    from mpnet_model.infer.backends.base import make_backend
    from mpnet_model.model.checkpoint import read_checkpoint, update_checkpoint_extra
    from mpnet_model.train.trainer import resolve_device

    folder = result.folder
    if (folder / TUNED_EVAL / EVAL_MARKER).is_file():
        return RunResult.load(result.spec, folder, TUNED_EVAL)
    split = base.data.split()
    if not split.val:
        raise FileNotFoundError(f'analysis.tune_postprocess needs validation rooms; the split of {base.data.root} '
                                f'has none (data.val_fraction={base.data.val_fraction})')
    val_rooms = build_cache(split.val, base.data.cache_dir, split.loader, progress=progress)
    extra = read_checkpoint(result.checkpoint)['extra']
    sizes = extra.get('class_mean_instance_points') or training_sizes(base, progress)
    device = str(resolve_device(base.run.device))
    tuned = tune_postprocessing(make_backend('torch', result.checkpoint, device=device),
                                (load_room_npz(p) for p in val_rooms), sizes, acfg.tune_bandwidths,
                                acfg.tune_fractions, progress, batch_size=acfg.eval_batch_size,
                                min_instance_points=acfg.min_instance_points)
    update_checkpoint_extra(result.checkpoint, tuned.to_extra('val'))
    atomic_write_text(folder / TUNED_EVAL / 'tuning.md', f'# {result.spec.name}: post-processing tuned on the '
                      f'validation rooms\n\n{tuned.markdown()}')
    return evaluate_run(result.spec, folder, evaluation_rooms(base, acfg, progress), acfg, device, progress,
                        sizes, TUNED_EVAL, tuned.bandwidth, tuned.fraction)


def ensure_run(base: TrainConfig, acfg: AnalysisConfig, spec: RunSpec, out_dir: Path, progress: bool = True
               ) -> RunResult:
    """Train and evaluate a run unless its evaluation is already on disk (then just read it)."""
    cfg = run_config(base, spec, out_dir)
    folder = Path(cfg.run.out_dir)
    if (folder / 'eval' / EVAL_MARKER).is_file():
        log.info('run %s: finished evaluation found, skipped', spec.name)
        return RunResult.load(spec, folder)
    ensure_dataset(base, acfg, progress)
    log.info('run %s: training into %s', spec.name, folder)
    train_run(cfg, acfg, progress)
    rooms = evaluation_rooms(base, acfg, progress)
    from mpnet_model.model.checkpoint import read_checkpoint
    from mpnet_model.train.trainer import resolve_device

    stored = 'class_mean_instance_points' in read_checkpoint(folder / 'best.pt')['extra']
    return evaluate_run(spec, folder, rooms, acfg, str(resolve_device(base.run.device)), progress,
                        None if stored else training_sizes(base, progress))


def training_sizes(base: TrainConfig, progress: bool = True) -> list[float] | None:
    """Mean instance size per class over the training rooms (for checkpoints that do not store it)."""
    from mpnet_model.eval.evaluate import training_instance_sizes

    return training_instance_sizes(base.data.split(), base.data.cache_dir, progress)


def row_runs(base: TrainConfig, acfg: AnalysisConfig, row: str, out_dir: Path, progress: bool = True,
             mem_per_class: int | None = None, overrides: tuple[tuple[str, Any], ...] = (), tuned: bool = False
             ) -> list[RunResult]:
    """The runs of one row over all seeds (trained / evaluated as needed); `tuned`: their evaluations with
    post-processing tuned on the validation rooms (`tune_run`)."""
    mc = base.model.mem_per_class if mem_per_class is None else mem_per_class
    results = [ensure_run(base, acfg, RunSpec(row, mc, seed, overrides), out_dir, progress) for seed in acfg.seeds]
    return [tune_run(r, base, acfg, progress) for r in results] if tuned else results


# ---------------------------------------------------------------------------------------------------- tables
SUMMARY_COLUMNS = ('mPrec', 'mRec', 'mCov', 'mWCov', 'mIoU', 'oAcc')
# Over-segmentation (class means): predicted instances per gt instance (a ratio) and share of gt instances split.
OVERSEG_COLUMNS = ('mFrag', 'mSplit')


def mean_std(values) -> tuple[float, float]:
    """Mean and sample std over seeds, ignoring NaN; std is NaN for a single seed."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float('nan'), float('nan')
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else float('nan')


def format_percent(mean: float, std: float = float('nan')) -> str:
    """Metrics in percent as the paper prints them; '± std' when several seeds were run."""
    if math.isnan(mean):
        return 'n/a'
    return f'{100 * mean:.1f}' + ('' if math.isnan(std) else f' ± {100 * std:.1f}')


def format_metric(key: str, mean: float, std: float = float('nan')) -> str:
    """A summary metric as the tables print it: mFrag as a ratio, every other metric in %."""
    if key != 'mFrag':
        return format_percent(mean, std)
    if math.isnan(mean):
        return 'n/a'
    return f'{mean:.2f}' + ('' if math.isnan(std) else f' ± {std:.2f}')


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    return '\n'.join(lines + ['| ' + ' | '.join(row) + ' |' for row in rows])


def row_metrics(results: list[RunResult]) -> dict[str, tuple[float, float]]:
    """Seed mean ± std of the summary metrics and the per-tier instance precision / recall of one row."""
    metrics = {key: mean_std([r.summary.get(key, float('nan')) for r in results])
               for key in SUMMARY_COLUMNS + OVERSEG_COLUMNS}
    for metric, short in (('precision', 'mPrec'), ('recall', 'mRec')):
        per_seed = [r.tiers(metric) for r in results]
        for tier in TIERS:
            metrics[f'{short}.{tier}'] = mean_std([t[tier] for t in per_seed])
    return metrics


def postprocess_column(results: list[RunResult]) -> str:
    """The bandwidth / size fraction each seed's evaluation used, e.g. '1/0.5, 0.8/0.5'."""
    return ', '.join(f'{r.postprocess["bandwidth"]:g}/{r.postprocess["min_instance_fraction"]:g}'
                     if r.postprocess else '?' for r in results)


def ablation_table(rows: dict[str, list[RunResult]], split: str = 'test', title: str = '# Ablation (paper Table 1)',
                   note: str = '', show_postprocess: bool = False) -> str:
    """Markdown: Table 1 (switches + metrics, optionally each seed's bandwidth / size fraction) and the
    dominance-tier table of the same runs."""
    marks = {'FL': 'use_focal_loss', 'InsMem': 'use_ins_memory', 'SegMem': 'use_seg_memory',
             'Regul': 'use_regularization'}
    metrics = {row: row_metrics(results) for row, results in rows.items()}
    main_rows = [[row] + ['✓' if ABLATIONS[row][key] else '' for key in marks.values()]
                 + [format_metric(c, *metrics[row][c]) for c in SUMMARY_COLUMNS + OVERSEG_COLUMNS]
                 + ([postprocess_column(results)] if show_postprocess else []) for row, results in rows.items()]
    tier_columns = [f'{m}.{t}' for m in ('mPrec', 'mRec') for t in TIERS]
    tier_rows = [[row] + [format_percent(*metrics[row][c]) for c in tier_columns] for row in rows]
    first = next(iter(rows.values()))[0]
    shares = tier_shares(first.class_shares)
    tiers = assign_tiers(first.class_shares)
    members = {t: ', '.join(n for n, tier in zip(first.class_names, tiers) if tier == t) for t in TIERS}
    seeds = sorted({r.spec.seed for results in rows.values() for r in results})
    return '\n'.join([
        title, '', *([note, ''] if note else []),
        f'Whole-room evaluation on the {split} split; metrics in %, mean'
        f'{" ± std" if len(seeds) > 1 else ""} over seeds {seeds}. Instance metrics at IoU 0.5 (ASIS definitions); '
        'over-segmentation: mFrag = predicted instances per gt instance, mSplit = share of gt instances split '
        'into >= 2 predictions (class means).',
        '', markdown_table(['row', *marks, *SUMMARY_COLUMNS, *OVERSEG_COLUMNS]
                           + (['bandwidth/fraction per seed'] if show_postprocess else []), main_rows), '',
        '## Dominance tiers (paper §4.4, Fig. 6)', '',
        'Classes sorted by their share of training points: ' + '; '.join(
            f'{t} ({100 * shares[t]:.1f} % of points): {members[t]}' for t in TIERS) + '.', '',
        markdown_table(['row', *[c.replace('.', ' ') for c in tier_columns]], tier_rows), ''])


FIGURE_METRICS = (('mPrec', 'instance mPrec'), ('mRec', 'instance mRec'), ('mIoU', 'semantic mIoU'))


def ablation_figure(tables: dict[str, dict[str, list[RunResult]]], path: Path, title: str) -> Path:
    """One panel per metric (mPrec, mRec, mIoU): every seed as a dot and the mean ± std as a bar per row, for each
    evaluation in `tables` (e.g. ASIS's fixed post-processing and the tuned one) side by side."""
    from mpnet_model.viz.render import new_figure, save_figure

    fig = new_figure(4.2 * len(FIGURE_METRICS), 3.8)
    rows = list(next(iter(tables.values())))
    width = 0.8 / len(tables)
    for panel, (key, label) in enumerate(FIGURE_METRICS):
        ax = fig.add_subplot(1, len(FIGURE_METRICS), panel + 1)
        for k, (name, table) in enumerate(tables.items()):
            x = np.arange(len(rows)) + (k - (len(tables) - 1) / 2) * width
            values = [[100 * r.summary.get(key, float('nan')) for r in table[row]] for row in rows]
            means = [np.nanmean(v) for v in values]
            stds = [np.nanstd(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
            ax.bar(x, means, width * 0.9, yerr=stds, capsize=3, alpha=0.45, label=name)
            for xi, v in zip(x, values):
                ax.scatter(np.full(len(v), xi), v, s=12, color='k', zorder=3)
        ax.set_xticks(np.arange(len(rows)), rows, rotation=30, fontsize=8)
        ax.set_ylabel(f'{label} (%)')
        ax.grid(axis='y', alpha=0.3)
        if panel == 0:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


FIXED_LABEL = 'fixed post-processing'
TUNED_LABEL = 'tuned on validation'


def load_ablation(out_dir: str | Path) -> dict[str, dict[str, list[RunResult]]]:
    """The evaluations behind a finished `mpnet-analyse ablation` (its ablation.json names every row's runs), read
    back from `<out>/runs/<run>/eval[_tuned]/analysis_eval.json` without training or evaluating anything:
    {FIXED_LABEL: {row: [RunResult per seed]}, TUNED_LABEL: {...} (only if the ablation was tuned)}."""
    out_dir = Path(out_dir)
    data = json.loads((out_dir / 'ablation.json').read_text())
    tables: dict[str, dict[str, list[RunResult]]] = {FIXED_LABEL: {}}
    if all('tuned' in entry for entry in data.values()):
        tables[TUNED_LABEL] = {}
    for row, entry in data.items():
        for label, eval_name in ((FIXED_LABEL, 'eval'), (TUNED_LABEL, TUNED_EVAL)):
            if label not in tables:
                continue
            results = []
            for name in entry['runs']:
                folder = out_dir / 'runs' / name
                stored = json.loads((folder / eval_name / EVAL_MARKER).read_text())
                spec = RunSpec(stored.get('row', row), int(stored['mem_per_class']), int(stored['seed']))
                results.append(RunResult.load(spec, folder, eval_name))
            tables[label][row] = results
    return tables


def ablation_figure_from_results(out_dir: str | Path, path: str | Path | None = None) -> Path:
    """Draw the Table-1 figure (`ablation_figure`) of a finished ablation from its stored evaluations:
    `python -c "from mpnet_model.analysis.ablation import ablation_figure_from_results as f; f('runs/analysis')"`."""
    tables = load_ablation(out_dir)
    seeds = sorted({r.spec.seed for results in tables[FIXED_LABEL].values() for r in results})
    return ablation_figure(tables, Path(path) if path else Path(out_dir) / 'ablation.png',
                           f'Table 1 rows, seeds {seeds} (dots), mean ± std')


def run_ablation(base: TrainConfig, acfg: AnalysisConfig, out_dir: str | Path, progress: bool = True
                 ) -> dict[str, Path]:
    """Train / evaluate every row of `acfg.rows` and write ablation.md and ablation.json to `out_dir`."""
    out_dir = Path(out_dir)
    rows = {row: row_runs(base, acfg, row, out_dir, progress) for row in acfg.rows}
    text = ablation_table(rows, acfg.split)
    data = {row: {'runs': [r.spec.name for r in results],
                  'metrics': {k: {'mean': m, 'std': s} for k, (m, s) in row_metrics(results).items()}}
            for row, results in rows.items()}
    if acfg.tune_postprocess:
        tuned = {row: [tune_run(r, base, acfg, progress) for r in results] for row, results in rows.items()}
        text += '\n' + ablation_table(
            tuned, acfg.split, '# The same runs, post-processing tuned on the validation rooms',
            'Each run\'s mean-shift bandwidth and size-filter fraction chosen on the validation rooms '
            '(max F1 of mPrec / mRec, `mpnet_model.eval.tune`) and stored in its best.pt.', show_postprocess=True)
        for row, results in tuned.items():
            data[row]['tuned'] = {'postprocess': [r.postprocess for r in results],
                                  'metrics': {k: {'mean': m, 'std': s} for k, (m, s) in row_metrics(results).items()}}
    figures = {FIXED_LABEL: rows}
    if acfg.tune_postprocess:
        figures[TUNED_LABEL] = tuned
    seeds = sorted({r.spec.seed for results in rows.values() for r in results})
    png = ablation_figure(figures, out_dir / 'ablation.png', f'Table 1 rows, seeds {seeds} (dots), mean ± std')
    text += '\n![ablation](ablation.png)\n'
    table = atomic_write_text(out_dir / 'ablation.md', text)
    raw = atomic_write_text(out_dir / 'ablation.json', json.dumps(_json_safe(data), indent=1))
    return {'table': table, 'json': raw, 'plot': png}
