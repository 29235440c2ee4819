"""Post-processing tuned on validation rooms: the fast grid (network once, filter after merging) equals the robot's
path run per setting, the chosen values land in the checkpoint and mpnet-eval reads them back."""
import json

import numpy as np
import pytest
import torch
import yaml

from mpnet_model.config import small_config
from mpnet_model.data.blocks import room_to_blocks
from mpnet_model.data.classes import S3DIS_CLASSES
from mpnet_model.data.room import Room
from mpnet_model.data.synthetic import generate_room
from mpnet_model.eval.evaluate import evaluate_rooms, postprocess_settings
from mpnet_model.eval.tune import (
    BANDWIDTH_KEY,
    FRACTION_KEY,
    CachingBackend,
    apply_size_filter,
    f1,
    tune_postprocessing,
)
from mpnet_model.infer.backends.base import make_backend
from mpnet_model.infer.scene import SceneSegmenter
from mpnet_model.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, update_checkpoint_extra
from mpnet_model.model.mpnet import MPNet

TINY = dict(num_points=256, sa_npoints=(64, 32, 16, 4), embed_dropout=0.0)


@pytest.fixture(scope='module')
def room():
    xyz, rgb, sem, ins, _ = generate_room(np.random.default_rng(0), room_type='office', density=60,
                                          size=(4.0, 3.0, 2.6))
    return Room('office_t', xyz, rgb / 255.0, sem, ins, S3DIS_CLASSES)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory, room):
    """A small random MPNet whose BatchNorm statistics come from the room's blocks, so that its embeddings
    vary across points and mean shift finds ~12 instances in the room."""
    torch.manual_seed(3)
    cfg = small_config(**TINY)
    model = MPNet(cfg)
    blocks = room_to_blocks(room.xyz, room.rgb, block_size=1.0, stride=0.5, num_points=cfg.num_points,
                            min_points=20, rng=np.random.default_rng(0))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None                                      # cumulative average over the batch
    with torch.no_grad():
        model.train()(torch.from_numpy(blocks.points[:32]))
    path = tmp_path_factory.mktemp('tune') / 'model.pt'
    sizes = [400.0] * cfg.num_classes
    return save_checkpoint(path, model.eval(), cfg, extra={'class_mean_instance_points': sizes})


def test_size_filter_equals_the_segmenters(checkpoint, room):
    backend = CachingBackend(make_backend('torch', checkpoint))
    unfiltered = SceneSegmenter(backend, bandwidth=0.6).segment(room.xyz, room.rgb)
    ids, sizes = np.unique(unfiltered.instances[unfiltered.instances >= 0], return_counts=True)
    assert ids.size >= 3, 'the test model must give several instances'
    threshold = np.full(len(S3DIS_CLASSES), float(np.median(sizes)))
    filtered = SceneSegmenter(backend, bandwidth=0.6, class_min_points=threshold).segment(room.xyz, room.rgb)
    ours = apply_size_filter(unfiltered.instances, unfiltered.labels, threshold)
    np.testing.assert_array_equal(ours >= 0, filtered.instances >= 0)
    assert 0 < (ours >= 0).sum() < (unfiltered.instances >= 0).sum()          # something dropped, something kept
    kept = ours >= 0                                                             # the same partition, other ids
    pairs = np.unique(np.stack([ours[kept], filtered.instances[kept]]), axis=1)
    assert pairs.shape[1] == np.unique(ours[kept]).size == np.unique(filtered.instances[kept]).size
    assert apply_size_filter(unfiltered.instances, unfiltered.labels, None) is unfiltered.instances


def test_caching_backend_runs_the_network_once_per_batch(checkpoint, room):
    backend = CachingBackend(make_backend('torch', checkpoint))
    first = SceneSegmenter(backend, bandwidth=0.5).segment(room.xyz, room.rgb)
    misses = backend.misses
    assert misses > 0
    again = SceneSegmenter(backend, bandwidth=0.5).segment(room.xyz, room.rgb)
    SceneSegmenter(backend, bandwidth=1.0).segment(room.xyz, room.rgb)
    assert backend.misses == misses
    np.testing.assert_array_equal(first.instances, again.instances)


def test_grid_equals_the_robot_path_and_best_is_chosen(checkpoint, room):
    sizes = read_checkpoint(checkpoint)['extra']['class_mean_instance_points']
    result = tune_postprocessing(make_backend('torch', checkpoint), [room], sizes, bandwidths=(0.4, 0.8),
                                 fractions=(0.0, 0.25), progress=False)
    assert len(result.grid) == 4 and result.rooms == ['office_t']
    best_f1 = max(g['F1'] for g in result.grid)
    assert result.best['F1'] == best_f1
    for cell in result.grid:
        thresholds = None if cell['fraction'] == 0 else cell['fraction'] * np.asarray(sizes)
        segmenter = SceneSegmenter.from_config('torch', checkpoint, bandwidth=cell['bandwidth'],
                                               class_min_points=thresholds)
        reference = evaluate_rooms(segmenter, [room], progress=False).instance
        for key in ('mPrec', 'mRec', 'mCov', 'mFrag', 'mSplit'):
            assert cell[key] == pytest.approx(reference[key], nan_ok=True), (cell, key)
        assert cell['F1'] == pytest.approx(f1(reference['mPrec'], reference['mRec']), nan_ok=True)
    assert 'Chosen: bandwidth' in result.markdown()
    with pytest.raises(ValueError, match='mean instance size'):
        tune_postprocessing(make_backend('torch', checkpoint), [room], None, fractions=(0.25,), progress=False)


def test_f1_hand_values():
    assert f1(0.5, 0.25) == pytest.approx(2 * 0.125 / 0.75)
    assert f1(0.0, 0.0) == 0.0
    assert np.isnan(f1(float('nan'), 0.3))


def test_tuned_values_round_trip_through_the_checkpoint(checkpoint, tmp_path):
    path = tmp_path / 'copy.pt'
    path.write_bytes(checkpoint.read_bytes())
    before = load_checkpoint(path)[0].state_dict()
    update_checkpoint_extra(path, {BANDWIDTH_KEY: 0.45, FRACTION_KEY: 0.1})
    model, _, meta = load_checkpoint(path)
    assert meta['extra'][BANDWIDTH_KEY] == 0.45 and meta['extra'][FRACTION_KEY] == 0.1
    assert meta['extra']['class_mean_instance_points'] == [400.0] * len(S3DIS_CLASSES)     # kept
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[name])
    assert postprocess_settings(meta['extra']) == (0.45, 0.1)
    assert postprocess_settings(meta['extra'], bandwidth=0.7) == (0.7, 0.1)
    assert postprocess_settings({}) == (0.6, 0.25)                                         # ASIS's


def test_mpnet_eval_tune_stores_and_uses_the_values(checkpoint, tmp_path, capsys):
    from mpnet_model.data.synthetic import main as synth_main
    from mpnet_model.eval.evaluate import main as eval_main

    data = tmp_path / 'synthetic'
    assert synth_main(['--out', str(data), '--areas', '1,5', '--rooms-per-area', '2', '--seed', '3',
                       '--density', '30', '--quiet']) == 0
    config = tmp_path / 'eval.yaml'
    config.write_text(yaml.safe_dump({'data': {'dataset': 'synthetic', 'root': str(data), 'test_area': 5,
                                               'cache_dir': str(tmp_path / 'cache'), 'val_fraction': 0.5}}))
    model = tmp_path / 'model.pt'
    model.write_bytes(checkpoint.read_bytes())
    args = ['--checkpoint', str(model), '--config', str(config), '--split', 'val', '--bandwidths', '0.5,0.9',
            '--fractions', '0,0.5']
    assert eval_main(args + ['--tune', '--out', str(tmp_path / 'tuned')]) == 0
    extra = read_checkpoint(model)['extra']
    assert extra[BANDWIDTH_KEY] in (0.5, 0.9) and extra[FRACTION_KEY] in (0.0, 0.5)
    assert extra['postprocess_tuning']['split'] == 'val' and len(extra['postprocess_tuning']['grid']) == 4
    # rooms keep the point filter: --tune leaves the static kind's area filter alone (--tune-size-filter sets it)
    assert 'static' not in (extra.get('min_instance_area_fraction') or {})
    assert (tmp_path / 'tuned' / 'tuning.md').is_file()
    tuned = json.loads((tmp_path / 'tuned' / 'summary.json').read_text())
    # A later evaluation without options uses the stored values: the same scores.
    assert eval_main(['--checkpoint', str(model), '--config', str(config), '--split', 'val',
                      '--out', str(tmp_path / 'again')]) == 0
    again = json.loads((tmp_path / 'again' / 'summary.json').read_text())
    assert again['mPrec'] == pytest.approx(tuned['mPrec'], nan_ok=True)
    assert again['mFrag'] == pytest.approx(tuned['mFrag'], nan_ok=True)
    assert 'tuned bandwidth' in capsys.readouterr().out
    # asked for, the static kind's area filter and join are tuned and stored
    assert eval_main(['--checkpoint', str(model), '--config', str(config), '--split', 'val', '--tune-size-filter',
                      '--out', str(tmp_path / 'static')]) == 0
    extra = read_checkpoint(model)['extra']
    assert 'static' in extra['min_instance_area_fraction'] and 'static' in extra['fragment_join']


def test_tuned_values_reach_the_segmenter_through_export_and_every_backend(checkpoint, room, tmp_path):
    # The real producer (tune_postprocessing -> TuningResult.to_extra -> update_checkpoint_extra) feeding the
    # metadata chain: checkpoint -> ONNX metadata (mpnet-export) -> backend -> SceneSegmenter.from_config.
    from mpnet_model.infer.export import main as export_main

    path = tmp_path / 'tuned.pt'
    path.write_bytes(checkpoint.read_bytes())
    sizes = read_checkpoint(path)['extra']['class_mean_instance_points']
    result = tune_postprocessing(make_backend('torch', path), [room], sizes, bandwidths=(0.45,), fractions=(0.3,),
                                 progress=False)
    update_checkpoint_extra(path, result.to_extra())
    assert export_main([str(path), '-o', str(tmp_path / 'tuned.onnx')]) == 0
    for kind, model in (('torch', path), ('onnxruntime', tmp_path / 'tuned.onnx')):
        segmenter = SceneSegmenter.from_config(kind, model)
        assert segmenter.bandwidth == pytest.approx(0.45), kind
        np.testing.assert_allclose(segmenter.class_min_points, 0.3 * np.asarray(sizes), err_msg=kind)


# --- the metric size filter, fragment join and point floor per sensor kind (issue 23) ----------------------------

def test_size_filter_grid_equals_the_robot_path(checkpoint, room):
    from mpnet_model.eval.tune import RECALL_TIE_F1, choose_size_filter, tune_size_filter
    from mpnet_model.infer.instances import class_mean_instance_area

    areas = class_mean_instance_area([room], len(S3DIS_CLASSES))
    points = read_checkpoint(checkpoint)['extra']['class_mean_instance_points']
    backend = make_backend('torch', checkpoint)
    result = tune_size_filter(backend, [room], 'static', areas, points, area_fractions=(0.0, 0.3), joins=(0.0, 0.2),
                              floors=(10, 50), point_fractions=(0.25,), bandwidth=0.6, progress=False)
    assert len(result.grid) == 2 * 2 * 2 + 1 and result.clouds == ['office_t']
    area_rows = [g for g in result.grid if g['filter'] == 'area']
    best_f1 = max(g['F1'] for g in area_rows)                    # near ties (RECALL_TIE_F1) go to the higher mRec
    assert result.best['F1'] >= best_f1 - RECALL_TIE_F1
    assert result.best['mRec'] == max(g['mRec'] for g in area_rows if g['F1'] >= best_f1 - RECALL_TIE_F1)
    assert (result.fraction, result.join, result.floor) == (result.best['fraction'], result.best['fragment_join'],
                                                            result.best['min_instance_points'])
    for cell in result.grid:
        if cell['filter'] == 'area':
            options = {'size_filter': 'area' if cell['fraction'] else 'off', 'fragment_join': cell['fragment_join'],
                       'class_min_area': cell['fraction'] * areas if cell['fraction'] else None}
        else:
            options = {'size_filter': 'points', 'class_min_points': cell['fraction'] * np.asarray(points)}
        segmenter = SceneSegmenter(backend, bandwidth=0.6, min_instance_points=int(cell['min_instance_points']),
                                   **options)
        reference = evaluate_rooms(segmenter, [room], progress=False).instance
        for key in ('mPrec', 'mRec', 'mCov', 'mFrag', 'mSplit'):
            assert cell[key] == pytest.approx(reference[key], nan_ok=True), (cell, key)
    assert any(g['fragment_join'] == 0.2 and g['mFrag'] != h['mFrag'] for g in area_rows for h in area_rows
               if h['fragment_join'] == 0.0 and h['fraction'] == g['fraction']
               and h['min_instance_points'] == g['min_instance_points'])              # the join changes something
    assert 'Chosen: bandwidth 0.6, area fraction' in result.markdown()
    rows = [dict(F1=0.30, mRec=0.20, mCov=0.3, bandwidth=0.6, fraction=0.5), dict(F1=0.295, mRec=0.25, mCov=0.3,
            bandwidth=0.6, fraction=0.1), dict(F1=0.25, mRec=0.40, mCov=0.3, bandwidth=0.6, fraction=0.0)]
    assert choose_size_filter(rows) is rows[1]                   # within 0.01 of the best F1, more recall
    extra = result.to_extra({'min_instance_area_fraction': {'lidar': 0.2}, 'fragment_join': {'lidar': 0.3}},
                            areas, 0.1)
    assert extra['min_instance_area_fraction'] == {'lidar': 0.2, 'static': result.fraction}     # other kinds kept
    assert extra['fragment_join'] == {'lidar': 0.3, 'static': result.join}
    assert extra['instance_min_points'] == {'static': result.floor}
    assert extra['size_filter_tuning']['static']['clouds'] == ['office_t']
    with pytest.raises(ValueError, match='sensor_kind'):
        tune_size_filter(backend, [room], 'sonar', areas)
    with pytest.raises(ValueError, match='finite areas'):
        tune_size_filter(backend, [room], 'lidar', areas[:3])


def test_size_filter_tuned_with_the_kinds_bandwidth(checkpoint, room):
    """Several bandwidths: the network runs once per cloud, every cell equals the robot path at its bandwidth, and
    the chosen bandwidth is stored per sensor kind (others kept) and read back by the backend."""
    from mpnet_model.eval.tune import CachingBackend, tune_size_filter
    from mpnet_model.infer.instances import class_mean_instance_area

    areas = class_mean_instance_area([room], len(S3DIS_CLASSES))
    cached = CachingBackend(make_backend('torch', checkpoint))
    result = tune_size_filter(cached, [room], 'lidar', areas, area_fractions=(0.0, 0.3), joins=(0.0,), floors=(10,),
                              bandwidths=(0.3, 0.9), progress=False)
    blocks = cached.misses
    assert blocks > 0 and sorted({g['bandwidth'] for g in result.grid}) == [0.3, 0.9] and len(result.grid) == 4
    assert result.bandwidth in (0.3, 0.9) and result.best['bandwidth'] == result.bandwidth
    one = tune_size_filter(cached, [room], 'lidar', areas, area_fractions=(0.0,), joins=(0.0,), floors=(10,),
                           bandwidths=(0.9,), progress=False)
    assert cached.misses == blocks                     # the same blocks: replayed, not run again
    assert one.bandwidth is None and 'cluster_bandwidth_by_kind' not in one.to_extra({}, areas, 0.1)
    for cell in result.grid:
        options = {'size_filter': 'area' if cell['fraction'] else 'off',
                   'class_min_area': cell['fraction'] * areas if cell['fraction'] else None}
        segmenter = SceneSegmenter(cached, bandwidth=cell['bandwidth'], min_instance_points=10, **options)
        reference = evaluate_rooms(segmenter, [room], progress=False).instance
        for key in ('mPrec', 'mRec', 'mCov'):
            assert cell[key] == pytest.approx(reference[key], nan_ok=True), (cell, key)
    assert f"Chosen: bandwidth {result.bandwidth:g}," in result.markdown()
    extra = result.to_extra({'cluster_bandwidth_by_kind': {'rgbd': 0.5}}, areas, 0.1)
    assert extra['cluster_bandwidth_by_kind'] == {'rgbd': 0.5, 'lidar': result.bandwidth}
    with pytest.raises(ValueError, match='bandwidths must be > 0'):
        tune_size_filter(cached, [room], 'lidar', areas, bandwidths=(0.0, 0.5), progress=False)


def test_mpnet_eval_tune_on_frames_stores_the_kind_and_old_models_keep_working(checkpoint, tmp_path):
    """`mpnet-eval --tune` on a simulated lidar frames config: the lidar entries land in the checkpoint (class
    areas from the evaluated data's training frames: this checkpoint records no train_config), a later evaluation
    runs the metric filter; the untouched checkpoint still evaluates with today's filter."""
    from mpnet_model.data.synthetic.frames import generate_frames
    from mpnet_model.eval.evaluate import main as eval_main

    pytest.importorskip('trimesh')
    generate_frames(tmp_path / 'frames', {1: 1, 2: 1, 5: 1}, sensors=('os1-64',), frames=2, columns=512,
                    progress=False)
    config = tmp_path / 'lidar.yaml'
    config.write_text(yaml.safe_dump({'data': {'dataset': 'frames', 'root': str(tmp_path / 'frames'),
                                               'test_area': 5, 'val_fraction': 0.5}}))
    model = tmp_path / 'model.pt'
    model.write_bytes(checkpoint.read_bytes())
    old = eval_main(['--checkpoint', str(model), '--config', str(config), '--split', 'val', '--backend', 'torch',
                     '--out', str(tmp_path / 'old')])
    assert old == 0 and 'class_mean_instance_area' not in read_checkpoint(model)['extra']
    assert eval_main(['--checkpoint', str(model), '--config', str(config), '--tune', '--split', 'val',
                      '--kind-bandwidths', '0.4,0.8', '--backend', 'torch', '--out', str(tmp_path / 'tuned')]) == 0
    extra = read_checkpoint(model)['extra']
    assert set(extra['min_instance_area_fraction']) == set(extra['fragment_join']) == {'lidar'}
    assert len(extra['class_mean_instance_area']) == 13 and extra['instance_area_voxel'] == 0.1
    assert (tmp_path / 'tuned' / 'size_filter_lidar.md').is_file()
    segmenter = SceneSegmenter.from_config('torch', model, sensor_kind='lidar')
    tuned_fraction = extra['min_instance_area_fraction']['lidar']
    assert segmenter.size_filter.kind == ('area' if tuned_fraction > 0 else 'off')
    assert segmenter.min_instance_points == extra['instance_min_points']['lidar']
    assert extra['cluster_bandwidth_by_kind']['lidar'] in (0.4, 0.8)                # tuned with the lidar filter
    assert segmenter.bandwidth == extra['cluster_bandwidth_by_kind']['lidar']
