"""Today's frame path before issue 12 (main at f5393a0), kept runnable as the baseline of the frame benchmark and as
the reference that proves the new path exact.

`segment_reference(segmenter, xyz, rgb, intensity)` runs the old stages with the segmenter's options:

* blocks: `partition_blocks` + the per-block draw of `sample_block_indices_legacy` (one `rng.choice` /
  `rng.permutation` per block, numpy generator seeded with `segmenter.seed`) + `block_features`, in numpy;
* inference: `Backend.run` on batches of 8 blocks (today's default), numpy in and out;
* mean shift: `mean_shift_blocks_reference` (one call per block);
* merging: `block_merging_reference` (one `BlockMerger.add_block` per block);
* projection: a k-d tree and the old numpy instance filter.

It shares the backends with the new code; their numpy FPS now stops early on blocks whose positions are exhausted
(bit-identical indices), which only makes this path faster than it was: speed-ups measured against it are
understated, never inflated.

The new path with ``layout='grid', sampler='legacy'`` draws the same blocks; its answers equal this path's
(tests/test_frame.py) and the golden outputs made at f5393a0 (label agreement 100 %, instance ARI 1.000).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from mpnet_model.data.blocks import BlockPartition, block_features, partition_blocks
from mpnet_model.infer.instances import instance_summaries, join_fragments

REFERENCE_BATCH_SIZE = 8        # today's SceneSegmenter default


def sample_block_indices_legacy(partition: BlockPartition, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """Today's per-block draw (K, P): `rng.choice` without replacement for blocks of >= P points, else every
    point plus `rng.choice` repeats, `rng.permutation`-ed. One Python iteration per block."""
    indices = np.empty((len(partition), num_points), dtype=np.int64)
    for k in range(len(partition)):
        members = partition.block_points(k)
        if members.shape[0] >= num_points:
            indices[k] = rng.choice(members, num_points, replace=False)
        else:
            extra = rng.choice(members, num_points - members.shape[0], replace=True)
            indices[k] = rng.permutation(np.concatenate([members, extra]))
    return indices


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def segment_reference(segmenter, xyz: np.ndarray, rgb: np.ndarray | None = None,
                      intensity: np.ndarray | None = None, batch_size: int = REFERENCE_BATCH_SIZE):
    """Today's `SceneSegmenter.segment` (see the module docstring) -> `SceneResult` with the same stage timings."""
    from mpnet_model.infer.meanshift import mean_shift_blocks_reference
    from mpnet_model.infer.merging import block_merging_reference
    from mpnet_model.infer.scene import SceneResult, _Clock

    clock = _Clock()
    xyz, colours = segmenter.check_cloud(xyz, rgb, intensity)
    num_input = xyz.shape[0]
    if num_input < segmenter.min_block_points:
        return SceneResult.empty(num_input, clock.finish())
    partition = partition_blocks(xyz, segmenter.block_size, segmenter.stride, segmenter.min_block_points)
    indices = sample_block_indices_legacy(partition, segmenter.num_points, np.random.default_rng(segmenter.seed))
    points = block_features(xyz, colours, indices, partition.origins, partition)
    clock.lap('blocks')
    if len(partition) == 0:
        return SceneResult.empty(num_input, clock.finish())
    outputs = [segmenter.backend.run(points[start:start + batch_size])
               for start in range(0, points.shape[0], batch_size)]
    logits, embeddings = np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])
    clock.lap('inference')
    block_instances = mean_shift_blocks_reference(np.ascontiguousarray(embeddings, dtype=np.float32),
                                                  segmenter.bandwidth)
    clock.lap('meanshift')
    probabilities = _softmax(logits)
    num_classes = probabilities.shape[-1]
    sampled, inverse = np.unique(indices.reshape(-1), return_inverse=True)
    sums = np.zeros((sampled.size, num_classes), dtype=np.float64)
    np.add.at(sums, inverse, probabilities.reshape(-1, num_classes))
    counts = np.bincount(inverse, minlength=sampled.size)[:, None]
    sampled_probs = (sums / counts).astype(np.float32)
    instance_of_point = block_merging_reference(xyz, indices, block_instances, probabilities.argmax(-1),
                                                gap=segmenter.merge_gap)
    sampled_instances = np.asarray(instance_of_point)[sampled]
    clock.lap('merging')
    source = np.full(num_input, -1, dtype=np.int64)
    source[sampled] = np.arange(sampled.size)
    missing = np.flatnonzero(source < 0)
    if missing.size:
        source[missing] = cKDTree(xyz[sampled]).query(xyz[missing], k=1)[1]
    probs = sampled_probs[source]
    labels = probs.argmax(axis=1).astype(np.int32)
    scores = probs[np.arange(num_input), labels].astype(np.float32)
    instances, infos = _finalise_instances(segmenter, xyz, labels, scores, sampled_instances[source].astype(np.int64))
    clock.lap('projection')
    return SceneResult(labels, scores, instances, infos, clock.finish(), num_blocks=len(partition))


def _finalise_instances(segmenter, xyz: np.ndarray, labels: np.ndarray, scores: np.ndarray, instances: np.ndarray):
    """Today's numpy instance filter: drop small instances, renumber largest first, majority class, boxes."""
    final = np.full(labels.shape, -1, dtype=np.int32)
    if segmenter.fragment_join > 0:
        instances = join_fragments(torch.from_numpy(xyz), torch.from_numpy(instances), torch.from_numpy(labels),
                                   segmenter.fragment_join, len(segmenter.class_names)).numpy()
    valid = instances >= 0
    if not valid.any():
        return final, []
    num_classes = len(segmenter.class_names)
    ids, inverse, sizes = np.unique(instances[valid], return_inverse=True, return_counts=True)
    keep = sizes >= segmenter.min_instance_points
    keep &= segmenter.size_filter.keep(torch.from_numpy(xyz[valid]), torch.from_numpy(inverse.astype(np.int64)),
                                       torch.from_numpy(labels[valid].astype(np.int64)), torch.from_numpy(sizes),
                                       num_classes).numpy()
    order = np.lexsort((ids, -sizes))
    order = order[keep[order]]
    new_id = np.full(ids.size, -1, dtype=np.int32)
    new_id[order] = np.arange(order.size, dtype=np.int32)
    final[valid] = new_id[inverse]
    members = final >= 0
    member_ids, member_labels = final[members], labels[members]
    votes = np.zeros((order.size, num_classes), dtype=np.int64)
    np.add.at(votes, (member_ids, member_labels), 1)
    counts = np.bincount(member_ids, minlength=order.size)
    score_sum = np.bincount(member_ids, weights=scores[members], minlength=order.size)
    lower = np.full((order.size, 3), np.inf)
    upper = np.full((order.size, 3), -np.inf)
    np.minimum.at(lower, member_ids, xyz[members])
    np.maximum.at(upper, member_ids, xyz[members])
    summaries = instance_summaries(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (
        xyz, final.astype(np.int64), labels.astype(np.int64), scores, votes.argmax(axis=1))))
    infos = segmenter._instance_infos(votes, counts, score_sum, lower, upper,   # the same InstanceInfo rule
                                      *(value.numpy() for value in summaries))
    return final, infos
