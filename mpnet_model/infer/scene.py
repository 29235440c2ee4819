"""Whole-scene segmentation: the one entry point used by the ROS node, the bag tool, evaluation and the demo.

cloud (N points) ──► 1 m blocks, stride 0.5 m (`room_to_blocks`, ASIS channels) ──► backend in batches
  ──► per-block mean shift on the instance embeddings ──► BlockMerging into scene instances
  ──► back to EVERY input point: semantic probabilities are averaged over all block samples of a point, points
      that no block sampled take the values of their nearest sampled point (scipy cKDTree).

Colour channels for clouds without RGB (lidar): the intensity, scaled per cloud between its 1st and 99th
percentile to [0, 1] and used as grey (r = g = b); constant 0.5 grey when there is no intensity either. Why: the
model was trained on RGB, where the colour channels vary across a block; percentile-scaled intensity has a similar
spread and still carries surface (material / reflectivity) contrast, while a constant is a pattern the network
never saw in training. Percentiles (not min/max) keep retro-reflectors from squashing everything else to black.
`lidar_colour='grey'` selects the constant instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from mpnet_model.infer.backends.base import Backend, make_backend
from mpnet_model.infer.merging import block_merging

DEFAULT_MIN_BLOCK_POINTS = 20      # sparse lidar blocks still get a prediction (training uses 100)
DEFAULT_MIN_INSTANCE_POINTS = 50
DEFAULT_MERGE_GAP = 0.005          # BlockMerging voxel edge [m]


@dataclass
class InstanceInfo:
    id: int
    class_id: int
    class_name: str
    centre: np.ndarray        # (3,) axis-aligned bounding-box centre
    extent: np.ndarray        # (3,) bounding-box size
    num_points: int
    score: float              # mean semantic confidence of the instance's points


@dataclass
class SceneResult:
    labels: np.ndarray        # (N,) int32 class ids, -1 where nothing could be predicted
    scores: np.ndarray        # (N,) float32 probability of the label
    instances: np.ndarray     # (N,) int32, -1 = no instance
    instances_info: list[InstanceInfo] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)   # milliseconds per stage

    @classmethod
    def empty(cls, num_points: int, timings: dict[str, float] | None = None) -> SceneResult:
        return cls(np.full(num_points, -1, np.int32), np.zeros(num_points, np.float32),
                   np.full(num_points, -1, np.int32), [], dict(timings or {}))


def intensity_to_grey(intensity: np.ndarray) -> np.ndarray:
    """(N,) intensity -> (N,3) float32 grey in [0,1], scaled between the cloud's 1st and 99th percentile."""
    low, high = np.percentile(intensity, [1.0, 99.0])
    grey = np.clip((intensity - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)
    return np.repeat(grey[:, None], 3, axis=1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class SceneSegmenter:
    """Segments whole clouds with any `Backend`. Deterministic for a fixed `seed` (block sampling)."""

    def __init__(self, backend: Backend, block_size: float = 1.0, stride: float = 0.5, num_points: int | None = None,
                 batch_size: int = 8, bandwidth: float = 0.6, min_instance_points: int = DEFAULT_MIN_INSTANCE_POINTS,
                 seed: int = 0, min_block_points: int = DEFAULT_MIN_BLOCK_POINTS, lidar_colour: str = 'intensity',
                 merge_gap: float = DEFAULT_MERGE_GAP, class_min_points: np.ndarray | None = None):
        if num_points is not None and num_points != backend.num_points:
            raise ValueError(f'num_points={num_points} but the model ({backend.source}) takes {backend.num_points} '
                             'points per block')
        if batch_size < 1 or bandwidth <= 0 or min_instance_points < 1 or min_block_points < 1:
            raise ValueError(f'batch_size={batch_size}, bandwidth={bandwidth}, min_instance_points='
                             f'{min_instance_points}, min_block_points={min_block_points}: all must be positive')
        if lidar_colour not in ('intensity', 'grey'):
            raise ValueError(f"lidar_colour={lidar_colour!r}: choose 'intensity' or 'grey'")
        self.backend = backend
        self.block_size, self.stride = float(block_size), float(stride)
        self.num_points = backend.num_points
        self.batch_size, self.bandwidth = int(batch_size), float(bandwidth)
        self.min_instance_points, self.min_block_points = int(min_instance_points), int(min_block_points)
        self.seed, self.lidar_colour = int(seed), lidar_colour
        self.merge_gap = float(merge_gap)
        # Optional per-class minimum instance size (points), e.g. ASIS's 0.25 x the training set's mean instance
        # size of the class: evaluation uses it; on a robot the density differs, so min_instance_points rules.
        self.class_min_points = None
        if class_min_points is not None:
            self.class_min_points = np.asarray(class_min_points, dtype=np.float64).reshape(-1)
            if self.class_min_points.shape[0] != len(backend.class_names):
                raise ValueError(f'class_min_points has {self.class_min_points.shape[0]} entries for '
                                 f'{len(backend.class_names)} classes')

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.backend.class_names

    @classmethod
    def from_config(cls, backend: str = 'onnxruntime', model_path: str | Path = '', device: str = 'cpu',
                    precision: str = 'fp32', backend_options: dict | None = None, **segmenter_options
                    ) -> SceneSegmenter:
        """Build backend + segmenter in one call (the factory used by the node, bag tool and demo). Block geometry,
        bandwidth and per-class size filter default to the model's metadata; explicit options win."""
        runtime = make_backend(backend, model_path, device=device, precision=precision, **(backend_options or {}))
        segmenter_options.setdefault('block_size', runtime.metadata.block_size)
        segmenter_options.setdefault('stride', runtime.metadata.stride)
        segmenter_options.setdefault('bandwidth', runtime.metadata.cluster_bandwidth)
        segmenter_options.setdefault('class_min_points', runtime.metadata.class_min_points)
        return cls(runtime, **segmenter_options)

    def colours(self, num_points: int, rgb: np.ndarray | None, intensity: np.ndarray | None) -> np.ndarray:
        """The (N,3) colour channels: rgb, else intensity grey (see module docstring), else 0.5 grey."""
        if rgb is not None:
            rgb = np.asarray(rgb, dtype=np.float32)
            if rgb.shape != (num_points, 3):
                raise ValueError(f'rgb has shape {rgb.shape}, expected ({num_points}, 3)')
            if rgb.size and (rgb.min() < 0 or rgb.max() > 1):
                raise ValueError(f'rgb must be in [0, 1], got range [{rgb.min()}, {rgb.max()}]')
            return rgb
        if intensity is not None and self.lidar_colour == 'intensity' and num_points:
            intensity = np.asarray(intensity, dtype=np.float32).reshape(-1)
            if intensity.shape != (num_points,):
                raise ValueError(f'intensity has shape {intensity.shape}, expected ({num_points},)')
            return intensity_to_grey(intensity)
        return np.full((num_points, 3), 0.5, dtype=np.float32)

    def segment(self, xyz: np.ndarray, rgb: np.ndarray | None = None, intensity: np.ndarray | None = None
                ) -> SceneResult:
        """xyz (N,3), rgb (N,3) in [0,1] or None, intensity (N,) or None -> SceneResult for every input point."""
        from mpnet_model.data.blocks import room_to_blocks

        clock = _Clock()
        xyz = np.asarray(xyz, dtype=np.float32)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f'xyz must have shape (N, 3), got {xyz.shape}')
        if not np.isfinite(xyz).all():
            raise ValueError('xyz contains NaN/inf points; drop invalid points before segmenting')
        num_input = xyz.shape[0]
        colours = self.colours(num_input, rgb, intensity)
        if num_input < self.min_block_points:
            return SceneResult.empty(num_input, clock.finish())
        blocks = room_to_blocks(xyz, colours, block_size=self.block_size, stride=self.stride,
                                num_points=self.num_points, min_points=self.min_block_points,
                                rng=np.random.default_rng(self.seed))
        clock.lap('blocks')
        if len(blocks) == 0:
            return SceneResult.empty(num_input, clock.finish())

        logits, embeddings = self._run_backend(blocks.points)                 # (K,P,C), (K,P,E)
        clock.lap('inference')
        block_instances = self._cluster_blocks(embeddings)                    # (K,P) local ids
        clock.lap('meanshift')
        probabilities = _softmax(logits)                                      # (K,P,C)
        sampled, point_probs, point_instances = self._merge(xyz, blocks.indices, probabilities, block_instances)
        clock.lap('merging')
        result = self._project(xyz, sampled, point_probs, point_instances)
        clock.lap('projection')
        result.timings = clock.finish()
        return result

    def _run_backend(self, block_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs = [self.backend.run(block_points[start:start + self.batch_size])
                   for start in range(0, block_points.shape[0], self.batch_size)]
        return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])

    def _cluster_blocks(self, embeddings: np.ndarray) -> np.ndarray:
        from mpnet_model.infer.meanshift import mean_shift_blocks

        return mean_shift_blocks(np.ascontiguousarray(embeddings, dtype=np.float32), self.bandwidth)

    def _merge(self, xyz: np.ndarray, indices: np.ndarray, probabilities: np.ndarray, block_instances: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> sampled point ids (S,), their averaged class probabilities (S,C), scene instance ids (S,) (-1 none)."""
        num_classes = probabilities.shape[-1]
        flat_index = indices.reshape(-1)                                       # (K*P,)
        sampled, inverse = np.unique(flat_index, return_inverse=True)          # (S,), (K*P,)
        sums = np.zeros((sampled.size, num_classes), dtype=np.float64)
        np.add.at(sums, inverse, probabilities.reshape(-1, num_classes))
        counts = np.bincount(inverse, minlength=sampled.size)[:, None]
        point_probs = (sums / counts).astype(np.float32)                        # (S,C)
        block_labels = probabilities.argmax(-1)                                 # (K,P)
        instance_of_point = block_merging(xyz, indices, block_instances, block_labels, gap=self.merge_gap)  # (N,)
        return sampled, point_probs, instance_of_point[sampled]

    def _project(self, xyz: np.ndarray, sampled: np.ndarray, sampled_probs: np.ndarray,
                 sampled_instances: np.ndarray) -> SceneResult:
        """Sampled-point results -> every input point (nearest sampled point for the others)."""
        num_input = xyz.shape[0]
        source = np.full(num_input, -1, dtype=np.int64)                        # row of `sampled` for each point
        source[sampled] = np.arange(sampled.size)
        missing = np.flatnonzero(source < 0)
        if missing.size:
            _, nearest = cKDTree(xyz[sampled]).query(xyz[missing], k=1)
            source[missing] = nearest
        probs = sampled_probs[source]                                          # (N,C)
        labels = probs.argmax(axis=1).astype(np.int32)
        scores = probs[np.arange(num_input), labels].astype(np.float32)
        instances = sampled_instances[source].astype(np.int64)
        instances, infos = self._finalise_instances(xyz, labels, scores, instances)
        return SceneResult(labels, scores, instances, infos)

    def _finalise_instances(self, xyz: np.ndarray, labels: np.ndarray, scores: np.ndarray, instances: np.ndarray
                            ) -> tuple[np.ndarray, list[InstanceInfo]]:
        """Drop instances below `min_instance_points` (and below `class_min_points` of their majority class),
        renumber 0..K-1 (largest first); the class of an instance is the majority label of its points."""
        final = np.full(labels.shape, -1, dtype=np.int32)
        valid = instances >= 0
        if not valid.any():
            return final, []
        ids, inverse, sizes = np.unique(instances[valid], return_inverse=True, return_counts=True)
        keep = sizes >= self.min_instance_points
        if self.class_min_points is not None:
            votes = np.zeros((ids.size, len(self.class_names)), dtype=np.int64)
            np.add.at(votes, (inverse, labels[valid]), 1)
            keep &= sizes >= self.class_min_points[votes.argmax(axis=1)]
        order = np.lexsort((ids, -sizes))                                      # largest first, ties by old id
        order = order[keep[order]]
        new_id = np.full(ids.size, -1, dtype=np.int32)
        new_id[order] = np.arange(order.size, dtype=np.int32)
        final[valid] = new_id[inverse]
        num_classes = len(self.class_names)
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
        infos = []
        for instance_id in range(order.size):
            class_id = int(votes[instance_id].argmax())
            infos.append(InstanceInfo(id=instance_id, class_id=class_id, class_name=self.class_names[class_id],
                                      centre=((lower[instance_id] + upper[instance_id]) / 2).astype(np.float32),
                                      extent=(upper[instance_id] - lower[instance_id]).astype(np.float32),
                                      num_points=int(counts[instance_id]),
                                      score=float(score_sum[instance_id] / counts[instance_id])))
        return final, infos


class _Clock:
    """Stage timer: lap(name) records ms since the previous lap; finish() adds the total."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = (now - self.last) * 1e3
        self.last = now

    def finish(self) -> dict[str, float]:
        self.timings['total'] = (time.perf_counter() - self.start) * 1e3
        return self.timings
