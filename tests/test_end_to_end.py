"""Issue acceptance: generate 2 tiny rooms, train a few steps, evaluate whole rooms — every metric produced."""
import json

import yaml

from mpnet_model.data.synthetic import main as synth_main
from mpnet_model.eval.evaluate import main as eval_main
from mpnet_model.model.checkpoint import read_checkpoint
from mpnet_model.train.cli import main as train_main

TINY_MODEL = dict(num_points=256, feature_dim=32, sa_npoints=[128, 32, 8, 4],
                  sa_mlps=[[16, 16, 32], [32, 32, 64], [64, 64, 64], [64, 64, 128]],
                  fp_mlps=[[64, 64], [64, 64], [64, 32], [32, 32, 32]], mem_per_class=4)


def test_generate_train_evaluate(tmp_path, capsys):
    data = tmp_path / 'synthetic'
    assert synth_main(['--out', str(data), '--areas', '1,5', '--rooms-per-area', '1', '--seed', '7',
                       '--density', '150', '--quiet']) == 0
    config = tmp_path / 'train.yaml'
    config.write_text(yaml.safe_dump({
        'ablation': 'full', 'model': TINY_MODEL,
        'data': {'dataset': 'synthetic', 'root': str(data), 'cache_dir': str(tmp_path / 'cache'), 'test_area': 5,
                 'val_fraction': 0.0, 'stride': 1.0},
        'optim': {'epochs': 3, 'batch_size': 8, 'lr': 0.005},
        'run': {'out_dir': str(tmp_path / 'run'), 'num_workers': 0, 'device': 'cpu'}}))
    assert train_main(['--config', str(config)]) == 0
    history = read_checkpoint(tmp_path / 'run' / 'last.pt')['extra']['history']
    assert history[-1]['train_total'] < history[0]['train_total'], history

    out = tmp_path / 'eval'
    assert eval_main(['--checkpoint', str(tmp_path / 'run' / 'best.pt'), '--config', str(config),
                      '--out', str(out)]) == 0
    summary = json.loads((out / 'summary.json').read_text())
    for metric in ('oAcc', 'mAcc', 'mIoU', 'mCov', 'mWCov', 'mPrec', 'mRec'):
        assert metric in summary and summary[metric] == summary[metric], metric      # present and not NaN
    assert 0 < summary['oAcc'] <= 1
    reports = list(out.glob('*.md'))
    assert reports and 'dominant' in (out / next(p.name for p in out.glob('*_tiers.csv'))).read_text()
    assert (out / 'gt_instances.npz').is_file()
    # A checkpoint handed to the ONNX runtime is a clear CLI error, not a traceback.
    assert eval_main(['--checkpoint', str(tmp_path / 'run' / 'best.pt'), '--config', str(config),
                      '--backend', 'onnxruntime', '--out', str(tmp_path / 'bad')]) == 2
    assert 'not ONNX' in capsys.readouterr().err
