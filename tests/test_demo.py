"""The one-command demo, end to end on small inputs with the shipped model: outputs exist and are non-trivial."""
import os
import re
from pathlib import Path

import pytest
from rosbags.highlevel import AnyReader

from mpnet_model.infer.scene import SceneSegmenter
from mpnet_ros.demo import main, run_demo, write_summary

SHARED = Path(os.environ.get('MPNET_SHARED', Path(__file__).resolve().parents[2] / 'shared'))


def _png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and path.stat().st_size > 10_000


def test_demo_on_small_inputs(tmp_path):
    if not (SHARED / 'data').is_dir():
        pytest.skip(f'shared sample data not found at {SHARED / "data"}')
    segmenter = SceneSegmenter.from_config('onnxruntime', '')          # the shipped default model
    # The generated room at the training density (the default), where the model's instance-size filter applies.
    summaries, notes = run_demo(segmenter, tmp_path, SHARED, max_range=6.0)
    room, ouster, office = summaries
    assert not notes
    # The generated room has ground truth: the shipped model scores what it scored when it was shipped (issue 22:
    # oAcc 0.836, mIoU 0.456, mPrec 0.247, mRec 0.279 with its tuned size filter), less a margin; a wiring slip
    # (colours, geometry, floor, filter) falls far below.
    scores = {name: float(value) for name, value in re.findall(r'(oAcc|mIoU|mPrec|mRec) ([0-9.]+)', room.note)}
    assert scores['oAcc'] >= 0.80 and scores['mIoU'] >= 0.42, room.note
    assert scores['mPrec'] >= 0.20 and scores['mRec'] >= 0.23, room.note
    assert {'wall', 'floor', 'ceiling'} <= set(room.label_counts) and room.instances['chair'] >= 3, room.instances
    assert ouster.frames == 3 and office.points > 100_000
    for summary in summaries:
        assert _png(summary.picture), summary.picture
        assert sum(summary.label_counts.values()) == summary.points     # every point labelled
    with AnyReader([tmp_path / 'ouster_labeled']) as reader:
        topics = {c.topic: c.msgcount for c in reader.connections}
    assert topics['/mpnet_segment/labeled_cloud'] == 3 and topics['/mpnet_segment/instances'] == 3
    text = write_summary(summaries, 'onnxruntime', 'shipped', tmp_path, notes)
    assert (tmp_path / 'summary.md').read_text() == text and 'Ouster' in text


def test_demo_falls_back_to_a_generated_room(tmp_path, capsys):
    assert main(['--shared', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'out'),
                 '--room-density', '120']) == 0
    out = capsys.readouterr().out
    assert 'falling back to a generated room only' in out
    assert _png(tmp_path / 'out' / 'generated_room.png') and (tmp_path / 'out' / 'summary.md').is_file()
