"""The paper's analyses end to end on a tiny generated dataset (tiny model, one optimiser step per run), plus
hand-checkable pieces: config overrides, the per-class curve hook, block choice and slot-weight averaging."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mpnet_model.analysis import load_analysis_config
from mpnet_model.analysis.ablation import (
    FIXED_LABEL,
    TUNED_LABEL,
    ablation_figure_from_results,
    load_ablation,
    mean_std,
)
from mpnet_model.analysis.cli import main
from mpnet_model.analysis.visualise import blocks_with_most_instances, point_slot_weights
from mpnet_model.config import ConfigError
from mpnet_model.data.blocks import Blocks
from mpnet_model.eval.block_curves import ClassInstanceCurves
from mpnet_model.model.checkpoint import read_checkpoint

TINY = {
    'model': dict(num_points=128, feature_dim=32, sa_npoints=[64, 16, 8, 4],
                  sa_mlps=[[16, 16, 32], [32, 32, 64], [64, 64, 64], [64, 64, 128]],
                  fp_mlps=[[64, 64], [64, 64], [64, 32], [32, 32, 32]], mem_per_class=4),
    'data': {'dataset': 'synthetic', 'root': '{out}/synthetic', 'cache_dir': '{out}/cache', 'test_area': 5,
             'val_fraction': 0.5, 'stride': 1.0},          # no block overlap: 4x fewer blocks to run
    'optim': {'epochs': 1, 'batch_size': 4, 'lr': 0.005, 'max_steps': 1},
    'run': {'device': 'cpu', 'amp': False, 'num_workers': 0, 'log_every': 1},
    'analysis': {'rows': ['baseline', 'full'], 'sweep_mem_per_class': [2, 4], 'curve_val_blocks': 4,
                 'sweep_memory_scale': [1.0, 4.0], 'addressing_blocks': 3, 'tune_postprocess': True,
                 'tune_bandwidths': [0.5, 1.0], 'tune_fractions': [0.0, 0.5],
                 'min_instance_points': 5, 'vis_scenes': 1, 'vis_slots': 2, 'tsne_blocks': 1, 'tsne_points': 100,
                 'tsne_iter': 250, 'synthetic': {'areas': {1: 2, 5: 1}, 'density': 100, 'seed': 3, 'rare_prob': 1.0}},
}


@pytest.fixture(scope='module')
def analysed(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp('analysis')
    config = folder / 'tiny.yaml'
    config.write_text(yaml.safe_dump(TINY))
    out = folder / 'out'
    assert main(['all', '--config', str(config), '--out', str(out), '--quiet']) == 0
    return out


def _non_empty(path: Path) -> Path:
    assert path.is_file() and path.stat().st_size > 0, path
    return path


def test_ablation_table_lists_every_row_and_tier(analysed):
    text = _non_empty(analysed / 'ablation.md').read_text()
    assert '| baseline |' in text and '| full |  | ✓ | ✓ | ✓ |' in text
    assert 'mPrec dominant' in text and 'mRec non_dominant' in text
    data = json.loads((analysed / 'ablation.json').read_text())
    assert set(data) == {'baseline', 'full'}
    assert 0.0 <= data['full']['metrics']['oAcc']['mean'] <= 1.0
    for run in ('baseline-mc4-seed0', 'full-mc4-seed0'):
        assert (analysed / 'runs' / run / 'eval' / 'analysis_eval.json').is_file()
        assert (analysed / 'runs' / run / 'eval_tuned' / 'tuning.md').is_file()
    # The tuned evaluation: its values chosen from the grid, stored in the run's best.pt, reported per seed.
    assert 'post-processing tuned on the validation rooms' in text and 'bandwidth/fraction per seed' in text
    chosen = data['full']['tuned']['postprocess'][0]
    assert chosen['bandwidth'] in (0.5, 1.0) and chosen['min_instance_fraction'] in (0.0, 0.5)
    extra = read_checkpoint(analysed / 'runs' / 'full-mc4-seed0' / 'best.pt')['extra']
    assert (extra['cluster_bandwidth'], extra['min_instance_fraction']) == (chosen['bandwidth'],
                                                                          chosen['min_instance_fraction'])


def test_ablation_results_reload_and_figure_without_training(analysed, tmp_path):
    data = json.loads((analysed / 'ablation.json').read_text())
    tables = load_ablation(analysed)
    assert set(tables) == {FIXED_LABEL, TUNED_LABEL}
    for label, key in ((FIXED_LABEL, None), (TUNED_LABEL, 'tuned')):
        for row, entry in data.items():
            results = tables[label][row]
            assert [r.spec.name for r in results] == entry['runs']
            stored = (entry[key] if key else entry)['metrics']['mPrec']['mean']
            assert mean_std([r.summary['mPrec'] for r in results])[0] == pytest.approx(stored, nan_ok=True)
    assert [r.postprocess for r in tables[TUNED_LABEL]['full']] == data['full']['tuned']['postprocess']
    before = {p: p.stat().st_mtime_ns for p in (analysed / 'runs').rglob('*.pt')}
    png = _non_empty(ablation_figure_from_results(analysed, tmp_path / 'table1.png'))
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert {p: p.stat().st_mtime_ns for p in (analysed / 'runs').rglob('*.pt')} == before


def test_sweep_reuses_the_matching_run_and_plots(analysed):
    text = _non_empty(analysed / 'memory_sweep.md').read_text()
    assert '| 2 | 26 |' in text and '| 4 | 52 |' in text
    _non_empty(analysed / 'memory_sweep.png')
    runs = sorted(p.name for p in (analysed / 'runs').iterdir())
    assert runs == ['baseline-mc4-seed0', 'full-mc2-seed0', 'full-mc4-seed0',      # Mc=4 shared with the ablation
                    'full-mc4-seed0-memory_scale4']                                 # the scale sweep's


def test_scale_sweep_measures_addressing_and_over_segmentation(analysed):
    text = _non_empty(analysed / 'memory_scale.md').read_text()
    assert '| 1 |' in text and '| 4 |' in text and 'ins H/logM' in text and 'mSplit' in text
    _non_empty(analysed / 'memory_scale.png')
    data = json.loads((analysed / 'memory_scale.json').read_text())
    for scale in ('1', '4'):
        assert 0 < data[scale]['addressing']['ins_entropy'] <= 1
        assert data[scale]['metrics']['mFrag']['mean'] is None or data[scale]['metrics']['mFrag']['mean'] >= 0
    assert (analysed / 'runs' / 'full-mc4-seed0' / 'eval' / 'addressing.json').is_file()
    assert 'mFrag' in (analysed / 'ablation.md').read_text()
    _non_empty(analysed / 'ablation.png')


def test_addressing_stats_of_a_uniform_memory():
    # Identical memory rows: every cosine is equal, so every reader is uniform (H / log K = 1, max w = 1 / K) and
    # every point reads the same vector (spread 0). The baseline has no reader at all (NaN).
    from mpnet_model.analysis.memory_addressing import addressing_stats
    from mpnet_model.config import ablation_config
    from mpnet_model.model.mpnet import MPNet

    cfg = ablation_config('full', load_analysis_config(None, '.')[0].model).replace(**TINY['model'])
    torch.manual_seed(0)
    model = MPNet(cfg)
    with torch.no_grad():
        model.memory.memory.copy_(torch.randn(1, cfg.feature_dim).expand_as(model.memory.memory))
    blocks = np.random.default_rng(0).random((3, cfg.num_points, 9)).astype(np.float32)
    stats = addressing_stats(model, blocks, batch_size=2)
    assert stats['ins_entropy'] == pytest.approx(1.0, abs=1e-6)
    assert stats['seg_entropy'] == pytest.approx(1.0, abs=1e-6)
    assert stats['ins_max_weight'] == pytest.approx(1 / cfg.memory_slots, rel=1e-5)
    assert stats['seg_max_weight'] == pytest.approx(1 / cfg.num_classes, rel=1e-5)
    assert stats['ins_spread'] == pytest.approx(0.0, abs=1e-5) and stats['seg_spread'] == pytest.approx(0.0, abs=1e-5)
    baseline = addressing_stats(MPNet(cfg.replace(use_ins_memory=False, use_seg_memory=False,
                                                  use_regularization=False)), blocks)
    assert np.isnan(baseline['ins_entropy']) and np.isnan(baseline['seg_spread'])


def test_rare_cases_report_counts_planted_instances(analysed):
    text = _non_empty(analysed / 'rare_cases.md').read_text()
    data = json.loads((analysed / 'rare_cases.json').read_text())
    seed = data['seeds'][0]
    assert len(seed['rare_cases']) == int(np.ceil(0.2 * seed['num_gt']))
    assert data['planted'], 'rare_prob=1 plants rare arrangements in every room'
    assert set(map(tuple, seed['planted_in_rare_set'])) <= set(map(tuple, [p[:2] for p in data['planted']]))
    assert f'{len(seed["planted_in_rare_set"])} of {len(data["planted"])} planted' in text
    assert 'rare mPrec' in text and 'mPrec dominant' in text


def test_figures_are_written(analysed):
    figures = analysed / 'figures'
    for name in ('memory_slots.png', 'training_curves.png'):
        _non_empty(figures / name)
    assert list(figures.glob('tsne_*.png'))
    assert 'ins_prec' in _non_empty(analysed / 'figures.md').read_text()


def test_rerun_skips_finished_runs(analysed, tmp_path):
    config = tmp_path / 'tiny.yaml'
    config.write_text(yaml.safe_dump(TINY))
    before = {p: p.stat().st_mtime_ns for p in (analysed / 'runs').rglob('best.pt')}
    assert main(['ablation', '--config', str(config), '--out', str(analysed), '--quiet']) == 0
    assert {p: p.stat().st_mtime_ns for p in (analysed / 'runs').rglob('best.pt')} == before


def test_config_overrides_and_errors(tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text(yaml.safe_dump(TINY))
    base, acfg = load_analysis_config(config, tmp_path / 'o', ['analysis.seeds=[1,2]', 'optim.lr=0.01',
                                                               'analysis.synthetic.density=50'])
    assert acfg.seeds == [1, 2] and base.optim.lr == 0.01 and acfg.synthetic.density == 50.0
    assert base.data.root == str(tmp_path / 'o' / 'synthetic')
    with pytest.raises(ConfigError, match='analysis.rows'):
        load_analysis_config(config, tmp_path, ['analysis.rows=[baseline,bogus]'])
    with pytest.raises(ConfigError, match='analysis.tsne_pointz'):
        load_analysis_config(config, tmp_path, ['analysis.tsne_pointz=3'])
    with pytest.raises(ConfigError, match='curve_classes'):
        load_analysis_config(config, tmp_path, ['analysis.curve_classes=[toaster]'])
    assert main(['rare', '--config', str(tmp_path / 'missing.yaml'), '--out', str(tmp_path)]) == 2


def test_class_curves_perfect_prediction_scores_one():
    # One block: points 0-9 wall instance 0; 10-19, 20-29, 30-39 chair instances 1, 2, 3.
    num_classes = 13
    sem = np.array([2] * 10 + [8] * 30)
    ins = np.repeat([0, 1, 2, 3], 10)
    logits = np.eye(num_classes)[sem][None] * 10.0                      # (1,40,13)
    embed = np.eye(5)[ins][None] * 5.0                                  # (1,40,5): far apart instance centres
    curves = ClassInstanceCurves([f'c{i}' for i in range(num_classes)])
    curves.add_batch(torch.from_numpy(logits), torch.from_numpy(embed), sem[None], ins[None])
    values = curves.scalars()
    assert values['ins_prec/c2'] == 1.0 and values['ins_prec/c8'] == 1.0 and values['ins_rec/c8'] == 1.0
    assert 'ins_prec/c0' not in values                                  # no gt, no prediction: left out
    # The three chairs merged into one predicted instance: best IoU 10/30 < 0.5 -> precision 0/1, recall 0/3.
    merged = np.minimum(ins, 1)
    curves = ClassInstanceCurves([f'c{i}' for i in range(num_classes)])
    curves.add_batch(logits, np.eye(5)[merged][None] * 5.0, sem[None], ins[None])
    values = curves.scalars()
    assert values['ins_prec/c8'] == 0.0 and values['ins_rec/c8'] == 0.0 and values['ins_prec/c2'] == 1.0


def test_blocks_with_most_instances_and_slot_weight_average():
    ins = np.array([[0, 0, 0, 0], [0, 1, 2, -1], [3, 3, 4, 4]])           # 1, 3 (the -1 is none), 2 instances
    blocks = Blocks(points=np.zeros((3, 4, 9), np.float32), sem=np.zeros((3, 4), np.int64), ins=ins,
                    indices=np.array([[0, 1, 2, 3], [2, 3, 4, 4], [5, 5, 5, 5]]), origins=np.zeros((3, 2)))
    assert blocks_with_most_instances(blocks, 2).tolist() == [1, 2]

    class FixedWeights(torch.nn.Module):
        """Weights (b,P,2) = [x channel, 1 - x channel] of each block point."""
        def forward(self, points):
            x = points[..., 0]
            return {'ins_weights': torch.stack([x, 1 - x], -1)}

    blocks.points[0, :, 0] = [0.0, 0.2, 0.4, 0.6]
    blocks.points[1, :, 0] = [0.8, 1.0, 0.5, 0.5]
    sampled, weights = point_slot_weights(FixedWeights(), blocks, num_room_points=7, batch_size=2)
    assert sampled.tolist() == [0, 1, 2, 3, 4, 5]                       # point 6 never sampled
    # point 2: blocks 0 (0.4) and 1 (0.8) -> 0.6; point 3: 0.6 and 1.0 -> 0.8; point 4 twice 0.5.
    assert np.allclose(weights[:5, 0], [0.0, 0.2, 0.6, 0.8, 0.5])
    assert np.allclose(weights.sum(1), 1.0)


def test_mean_std_over_seeds():
    assert mean_std([0.5]) [0] == 0.5 and np.isnan(mean_std([0.5])[1])
    mean, std = mean_std([0.2, 0.4, float('nan')])
    assert mean == pytest.approx(0.3) and std == pytest.approx(np.std([0.2, 0.4], ddof=1))
