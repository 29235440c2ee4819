"""The sensor-frame benchmark's scoring (`mpnet_model.eval.frames.evaluate_clouds`) on hand-made clouds."""
import numpy as np

from mpnet_model.data.classes import S3DIS_CLASSES
from mpnet_model.data.room import Room
from mpnet_model.eval.frames import evaluate_clouds, summary_markdown


def _room() -> Room:
    # Two walls of 100 points each (class 2) at 1 m and 6 m from the sensor, and 50 floor points (class 1) at 3 m.
    xyz = np.concatenate([np.tile([1.0, 0, 0], (100, 1)), np.tile([6.0, 0, 0], (100, 1)),
                          np.tile([3.0, 0, 0], (50, 1))]).astype(np.float32)
    sem = np.array([2] * 200 + [1] * 50)
    ins = np.array([0] * 100 + [1] * 100 + [2] * 50)
    return Room('hand', xyz, np.full((250, 3), 0.5, np.float32), sem, ins, S3DIS_CLASSES)


def test_perfect_segmentation_scores_one_fragment_per_instance_and_no_split():
    room = _room()
    r = evaluate_clouds(lambda rm: (rm.sem.copy(), rm.ins.copy()), [lambda: room], len(S3DIS_CLASSES),
                        progress=False)
    assert r['mIoU'] == 1.0 and r['mPrec'] == 1.0 and r['mRec'] == 1.0
    assert r['mFrag'] == 1.0 and r['mSplit'] == 0.0
    assert set(r['range_bands']) == {'0-2 m', '2-5 m', '5-10 m'}
    assert r['range_bands']['5-10 m']['points'] == 100


def test_split_wall_counts_as_over_segmentation():
    room = _room()

    def split_first_wall(rm):
        ins = rm.ins.copy()
        ins[:40] = 7                      # the near wall in two pieces (60 + 40 points)
        return rm.sem.copy(), ins

    r = evaluate_clouds(split_first_wall, [lambda: room], len(S3DIS_CLASSES), progress=False)
    # Walls: 3 fragments over 2 gt walls, one of two split; floor: 1 / 0. Class means: (1.5 + 1) / 2, (0.5 + 0) / 2.
    assert r['mFrag'] == 1.25 and r['mSplit'] == 0.25
    assert '| 1.25 | 0.25 |' in summary_markdown({'window 1': r}, S3DIS_CLASSES)
