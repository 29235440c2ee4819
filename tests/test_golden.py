"""Golden real-frame outputs: today's frame path (shipped model, SceneSegmenter and the mpnet-bag CLI) on fixed
crops of the shared real data must keep giving the stored answers (tests/golden/README.md).

A refactor of the frame path passes these unchanged; a deliberate change of the answers (new model, new default
layout) regenerates the references with scripts/regen_goldens.py and shows the comparison in its commit.
"""
from __future__ import annotations

import numpy as np
import pytest
from golden_cases import CASES, DATA, GOLDEN_SETS, _segmenter, golden_path, office_patch

from mpnet_model.eval.golden import GoldenReference, GoldenTolerance, compare, instance_ari
from mpnet_model.infer.scene import SceneSegmenter

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f'shared sample data not found under {DATA}')


@pytest.fixture(scope='module')
def segmenter():
    return _segmenter()


@pytest.fixture(scope='module', params=list(GOLDEN_SETS))
def golden_set(request):
    """(segmenter, golden folder): the shipped model, and the 'room' model of issue 16 with its own goldens."""
    model_path, folder = GOLDEN_SETS[request.param]
    return _segmenter(model_path), folder


MIN_INSTANCES = {'office_patch': 5, 'kinect_frame': 3, 'ouster_8m_bag': 1}


@needs_data
@pytest.mark.parametrize('case', list(CASES))
def test_frame_path_matches_golden(case, golden_set):
    segmenter, folder = golden_set
    reference = GoldenReference.load(golden_path(case, folder))
    run = CASES[case](segmenter)
    assert run.labels.size == reference.info['points'], 'the crop changed: not the same input'
    report = compare(reference, run.int_labels, run.instances)
    assert report.ok, report.summary()
    # The references are not trivial (the retrained model keeps these crops' planes whole: the Ouster crop is one
    # ground instance joined across sparse blocks, the Kinect crop floor, walls and a door).
    assert report.instances_reference >= MIN_INSTANCES[case]
    assert len(np.unique(reference.labels)) >= 4


def test_the_kept_room_model_predates_the_encoding_setting():
    import onnx
    from golden_cases import ROOM_MODEL

    props = {p.key for p in onnx.load(str(ROOM_MODEL), load_external_data=False).metadata_props}
    assert 'input_encoding' not in props                       # written before issue 22: read as 'room'
    assert _segmenter(str(ROOM_MODEL)).input_encoding == 'room'


@needs_data
@pytest.mark.parametrize('bug', ['stride = block size', 'rgb replaced by grey'])
def test_golden_catches_known_wiring_bugs(bug, segmenter):
    """The realistic mutants of issue 18 fail the office golden (each changes > 20 % of the labels)."""
    if bug == 'stride = block size':
        broken = SceneSegmenter(segmenter.backend, block_size=1.0, stride=1.0, layout='grid')   # stride: grid only
    else:
        broken = SceneSegmenter(segmenter.backend)
        broken.colours = lambda n, rgb, intensity, *where: np.full((n, 3), 0.5, np.float32)
    report = compare(GoldenReference.load(golden_path('office_patch')), *_as_run(office_patch(broken)))
    assert not report.ok and report.label_agreement < 0.9, report.summary()


def _as_run(reference: GoldenReference) -> tuple[np.ndarray, np.ndarray]:
    return reference.int_labels, reference.instances


def test_compare_thresholds_hand_made():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 13, 1000)
    instances = np.repeat(np.arange(10), 100) - (np.arange(1000) >= 900) * 10   # 9 instances, 100 points without
    reference = GoldenReference.from_result(labels, instances)
    same = compare(reference, labels, (instances + 7) * (instances >= 0) - (instances < 0))   # ids renamed
    assert same.ok and same.label_agreement == 1.0 and same.instance_ari == 1.0, same.summary()

    changed = labels.copy()
    changed[:11] = (changed[:11] + 1) % 13                                        # 1.1 % of the labels
    report = compare(reference, changed, instances)
    assert not report.ok and report.label_agreement == pytest.approx(0.989) and 'label agreement' in report.summary()
    assert compare(reference, changed[:999], instances[:999]).failures[0].startswith('the run has 999 points')

    merged = np.where(instances == 1, 0, instances)                               # two instances become one
    report = compare(reference, labels, merged)
    assert report.instances_run == 8 and report.instance_ari < 0.95 and not report.ok
    dropped = np.where(instances >= 6, -1, instances)                              # 3 instances lost
    report = compare(reference, labels, dropped)
    assert 'instances, reference 9 (tolerance +-2)' in report.summary()
    assert GoldenTolerance().instance_count_slack(50) == 5


def test_histogram_shift_and_ari_reference_values():
    reference = GoldenReference.from_result(np.zeros(100, int), np.full(100, -1))
    moved = np.zeros(100, int)
    moved[:3] = 1                                                                 # 3 % of the points change class
    report = compare(reference, moved, np.full(100, -1), GoldenTolerance(min_label_agreement=0.9))
    assert report.histogram_shift == pytest.approx(0.03) and report.failures == ['class histogram shift 3.00% > 1%']
    # sklearn reference: partitions {0,0,1,1} vs {0,0,1,2}: ARI = 0.5714...
    assert instance_ari(np.array([0, 0, 1, 1, -1]), np.array([0, 0, 1, 2, -1])) == pytest.approx(4 / 7)
    assert instance_ari(np.full(4, -1), np.full(4, -1)) == 1.0


def test_reference_round_trip_is_small(tmp_path):
    labels = np.array([-1, 0, 12, 3])
    path = GoldenReference.from_result(labels, [-1, 2, 2, 5], case='x').save(tmp_path / 'r.npz')
    loaded = GoldenReference.load(path)
    assert loaded.labels.dtype == np.uint8 and loaded.instances.dtype == np.int32 and loaded.info == {'case': 'x'}
    np.testing.assert_array_equal(loaded.int_labels, labels)
    total = sum(golden_path(case).stat().st_size for case in CASES)
    assert total < 2_000_000, total
    with pytest.raises(ValueError, match='labels must lie'):
        GoldenReference.from_result([300], [0])
