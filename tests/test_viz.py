"""Pictures: colours, z-buffer, slot choice, t-SNE, TensorBoard reading, and that every PNG is a real image."""
import numpy as np
import pytest
from matplotlib.image import imread

from mpnet_model.data.classes import S3DIS_CLASSES, UNLABELLED_GREY, palette
from mpnet_model.viz.curves import read_scalars, render_curves, smooth
from mpnet_model.viz.memory_slots import render_memory_slots, top_slots
from mpnet_model.viz.render import (
    class_colours,
    instance_colours,
    rasterize,
    render_segmentation,
    render_views,
)
from mpnet_model.viz.tsne import embedding_tsne, render_tsne_comparison

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def assert_png(path):
    """A real PNG with more than one colour, and no temp file left next to it."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    assert image[..., :3].std() > 0
    assert [p.name for p in path.parent.iterdir() if p.name.endswith('.tmp.png')] == []


def tiny_room(n=3000, seed=0):
    """Floor (class 1), two walls (class 2, instances 1 / 2) and a table box (class 7): xyz, sem, ins."""
    rng = np.random.default_rng(seed)
    part = n // 4
    floor = np.c_[rng.uniform(0, 4, part), rng.uniform(0, 3, part), np.zeros(part)]
    wall_a = np.c_[rng.uniform(0, 4, part), np.zeros(part), rng.uniform(0, 2.5, part)]
    wall_b = np.c_[np.zeros(part), rng.uniform(0, 3, part), rng.uniform(0, 2.5, part)]
    table = np.c_[rng.uniform(1.5, 2.5, part), rng.uniform(1, 2, part), rng.uniform(0, 0.7, part)]
    xyz = np.concatenate([floor, wall_a, wall_b, table])
    sem = np.repeat([1, 2, 2, 7], part)
    ins = np.repeat([0, 1, 2, 3], part)
    return xyz, sem, ins


# ---------------------------------------------------------------- colours

def test_class_colours_match_palette_and_unlabelled_is_grey():
    colours = class_colours(np.array([0, 12, -1, 3]), 13)
    expected = palette(13)
    assert colours.dtype == np.uint8 and colours.shape == (4, 3)
    assert colours[0].tolist() == list(expected[0])
    assert colours[1].tolist() == list(expected[12])
    assert colours[2].tolist() == list(UNLABELLED_GREY)
    assert colours[3].tolist() == list(expected[3])


def test_class_colours_reject_labels_outside_the_class_list():
    with pytest.raises(ValueError, match='class labels'):
        class_colours(np.array([0, 13]), 13)


def test_instance_colours_stable_distinct_and_grey_for_none():
    ids = np.array([5, -1, 0, 5, 17])
    first, again = instance_colours(ids), instance_colours(ids[::-1])[::-1]
    assert np.array_equal(first, again)                        # same id -> same colour, whatever the call
    assert first[1].tolist() == list(UNLABELLED_GREY)
    assert np.array_equal(first[0], first[3])
    many = instance_colours(np.arange(200))
    assert len(np.unique(many, axis=0)) == 200                 # 200 ids -> 200 different colours
    assert not (many == np.array(UNLABELLED_GREY, np.uint8)).all(axis=1).any()


# ---------------------------------------------------------------- z-buffer

def test_rasterize_keeps_the_nearest_point_per_pixel():
    # points 0 and 1 project to the same spot; 1 is nearer. Point 2 sits alone in the far corner.
    uv = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    depth = np.array([5.0, 1.0, 3.0])
    view = rasterize(uv, depth, box_px=(11, 11), radius=0, pad_px=0)
    assert view.shape == (11, 11)
    assert view.pixels.tolist() == [0, 120]                    # (row 0, col 0) and (row 10, col 10)
    assert view.winners.tolist() == [1, 2]
    image = view.paint(np.eye(3))
    assert image[0, 0].tolist() == [0, 1, 0, 1] and image[10, 10].tolist() == [0, 0, 1, 1]
    assert image[5, 5, 3] == 0                                 # empty pixels stay transparent
    # a 1-pixel splat covers the 3x3 neighbourhood; the nearer point still owns the shared centre
    wide = rasterize(uv, depth, box_px=(11, 11), radius=1, pad_px=0)
    assert len(wide.pixels) == 4 + 4 and wide.winners[wide.pixels.tolist().index(0)] == 1


# ---------------------------------------------------------------- rendered pictures

def test_render_views_writes_png_from_uint8_and_float_colours(tmp_path):
    xyz, sem, _ = tiny_room()
    assert_png(render_views(xyz, class_colours(sem, 13), tmp_path / 'a.png', title='uint8'))
    rgb = np.random.default_rng(1).uniform(0, 1, (len(xyz), 3))
    assert_png(render_views(xyz, rgb, tmp_path / 'sub' / 'b.png', max_points=500, height_fraction=None))
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        render_views(xyz, rgb * 255, tmp_path / 'c.png')
    with pytest.raises(ValueError, match='shape'):
        render_views(xyz[:, :2], rgb, tmp_path / 'd.png')


def test_render_segmentation_with_and_without_ground_truth(tmp_path):
    xyz, sem, ins = tiny_room()
    pred = sem.copy()
    pred[::5] = -1
    assert_png(render_segmentation(xyz, pred, ins, S3DIS_CLASSES, tmp_path / 'pred.png', 'prediction only'))
    both = render_segmentation(xyz, pred, ins, S3DIS_CLASSES, tmp_path / 'both.png', 'with gt',
                               gt_labels=sem, gt_instances=ins)
    assert_png(both)
    assert imread(both).shape[1] > imread(tmp_path / 'pred.png').shape[1]    # gt adds a column
    assert_png(render_segmentation(xyz, pred, ins, S3DIS_CLASSES, tmp_path / 'sem_gt.png', gt_labels=sem))
    with pytest.raises(ValueError, match='gt_labels'):
        render_segmentation(xyz, pred, ins, S3DIS_CLASSES, tmp_path / 'x.png', gt_labels=sem[:10])


# ---------------------------------------------------------------- memory slots

def test_top_slots_finds_planted_slots():
    rng = np.random.default_rng(0)
    weights = rng.uniform(0, 0.1, (500, 8))
    weights[:, 5] += 0.5                                       # slot 5: high weight everywhere
    weights[:200, 2] += 0.8                                    # slot 2: wins 200 points by far
    weights /= weights.sum(axis=1, keepdims=True)
    assert top_slots(weights, 1).tolist() == [5]
    assert top_slots(weights, 2, by='argmax').tolist() == [5, 2]   # 300 wins vs 200 wins
    assert top_slots(weights, 8).shape == (8,)
    with pytest.raises(ValueError, match='k must be'):
        top_slots(weights, 9)
    with pytest.raises(ValueError, match='by must be'):
        top_slots(weights, 1, by='median')


def test_render_memory_slots_png(tmp_path):
    scenes = [tiny_room(1200, seed) for seed in (0, 1)]
    xyz_list = [s[0] for s in scenes]
    # weights: slot 0 follows height, slot 1 follows x, slot 2 is flat (zero range must not divide by zero)
    weights_list = [np.c_[x[:, 2], x[:, 0], np.ones(len(x))] for x in xyz_list]
    path = render_memory_slots(xyz_list, weights_list, [0, 1, 2], tmp_path / 'slots.png', title='slots')
    assert_png(path)
    with pytest.raises(ValueError, match='slot_ids'):
        render_memory_slots(xyz_list, weights_list, [3], tmp_path / 'bad.png')


# ---------------------------------------------------------------- t-SNE

def clustered_embeddings(n_per=25, n_instances=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (n_instances, 5))
    ids = np.repeat(np.arange(n_instances), n_per)
    return centres[ids] + rng.normal(0, 0.1, (len(ids), 5)), ids


def test_embedding_tsne_shape_subsample_and_determinism():
    emb, ids = clustered_embeddings()
    ids[:10] = -1                                              # unlabelled points are left out
    coords, kept = embedding_tsne(emb, ids, max_points=60, seed=3, max_iter=500)
    assert coords.shape == (60, 2) and kept.shape == (60,) and (kept >= 0).all()
    again, kept_again = embedding_tsne(emb, ids, max_points=60, seed=3, max_iter=500)
    assert np.array_equal(coords, again) and np.array_equal(kept, kept_again)
    # well separated clusters stay separated: every point's nearest t-SNE neighbour has its instance
    dist = np.linalg.norm(coords[:, None] - coords[None], axis=-1) + np.eye(len(coords)) * 1e9
    assert (kept[dist.argmin(axis=1)] == kept).mean() > 0.95
    with pytest.raises(ValueError, match='instance_ids'):
        embedding_tsne(emb, ids[:5])


def test_render_tsne_comparison_png(tmp_path):
    good, ids = clustered_embeddings()
    noisy = good + np.random.default_rng(1).normal(0, 5, good.shape)
    assert_png(render_tsne_comparison({'baseline': (noisy, ids), 'MPNet': (good, ids)}, tmp_path / 'tsne.png',
                                      title='embeddings', max_points=60, max_iter=500))


# ---------------------------------------------------------------- curves

def test_smooth_matches_hand_computed_ema():
    assert smooth([1.0, 3.0, 3.0], 0.5).tolist() == pytest.approx([1.0, 2.0, 2.5])
    assert smooth([1.0, 3.0], 0.0).tolist() == [1.0, 3.0]


def test_read_scalars_from_summary_writer(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    for step in range(3):
        writer.add_scalar('ins_prec/wall', 0.1 * step, step)
        writer.add_scalar('loss/total', 5.0 - step, step)
    writer.add_scalar('ins_prec/wall', 0.9, 2)                 # re-logged step: the later value wins
    writer.close()
    scalars = read_scalars(tmp_path, 'ins_prec/')
    assert list(scalars) == ['ins_prec/wall']
    steps, values = zip(*scalars['ins_prec/wall'])
    assert steps == (0, 1, 2) and values == pytest.approx((0.0, 0.1, 0.9))
    assert set(read_scalars(tmp_path)) == {'ins_prec/wall', 'loss/total'}
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no TensorBoard event files'):
        read_scalars(tmp_path / 'empty')
    with pytest.raises(FileNotFoundError, match='not found'):
        read_scalars(tmp_path / 'missing')


def test_render_curves_png_and_unknown_tag(tmp_path):
    steps = np.arange(20)
    runs = {'with memory': {'wall': list(zip(steps, 0.5 + 0.02 * steps)),
                            'sofa': list(zip(steps, 0.1 * np.sqrt(steps)))},
            'without memory': {'wall': list(zip(steps, 0.4 + 0.02 * steps))}}
    assert_png(render_curves(runs, ['wall', 'sofa'], tmp_path / 'curves.png', title='instance precision',
                             smoothing=0.6))
    with pytest.raises(KeyError, match='chair'):
        render_curves(runs, ['chair'], tmp_path / 'none.png')
