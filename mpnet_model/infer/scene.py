"""Whole-scene segmentation: the one frame path used by the ROS node, the bag tool, evaluation and the demo.

cloud (N points, host) ──► device (the backend's: CPU or CUDA), once
  ──► blocks of the chosen layout (`mpnet_model.infer.blocking`: 1 m columns, ASIS channels, vectorised)
  ──► backend on the whole frame in memory-bounded chunks (`Backend.run_frame`, FPS on the device)
  ──► mean shift on the instance embeddings of every block ──► BlockMerging into scene instances
  ──► back to EVERY input point: semantic probabilities are averaged over all block samples of a point, points
      that no block sampled take the values of their nearest sampled point
  ──► instance filtering and summaries ──► host, once.
Every stage works on torch tensors on the backend's device; no stage loops over blocks in Python.

Colour channels for clouds without RGB (lidar): the intensity, scaled between the 1st and 99th percentile of the
returns within `INTENSITY_REFERENCE_RANGE` (8 m) of the sensor to [0, 1] and used as grey (r = g = b); constant
0.5 grey when there is no intensity either. Why: the model was trained on RGB, where the colour channels vary
across a block; percentile-scaled intensity has a similar spread and still carries surface (material /
reflectivity) contrast, while a constant is a pattern the network never saw in training. Percentiles (not
min/max) keep retro-reflectors from squashing everything else to black. The reference set is the returns near the
sensor, not the whole cloud: the whole cloud's 99th percentile moved from 1,424 to 2,720 between the 8 m and the
15 m crop of the shared Ouster scan (signs and retro-reflectors at range), which re-coloured the points within 8 m
and changed 7 % of their classes (issue 22). Clouds with fewer than `INTENSITY_REFERENCE_MIN` returns that near
use them all. `lidar_colour='grey'` selects the constant instead.

The model's input encoding (`ModelMetadata.input_encoding`, mpnet_model/data/encoding.py) decides the location
channels: ``room`` (ASIS) uses the cloud's own lowest point and extent; ``floor`` the height above the floor, which
`segment` takes as given (`floor=`, a known floor) or estimates from the cloud (`mpnet_model.infer.floor`), and
then also anchors the block grid to a lattice and samples each block from keys of its own points, so that a stray
return or a range crop changes only the blocks it touches.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from mpnet_model.data.encoding import needs_floor
from mpnet_model.infer.backends.base import Backend, make_backend
from mpnet_model.infer.blocking import (
    LAYOUTS,
    SAMPLERS,
    FrameBlocks,
    FramePartition,
    frame_blocks,
    sample_partition,
)
from mpnet_model.infer.device_ops import compact, read_host, to_device
from mpnet_model.infer.device_ops import counts as _counts
from mpnet_model.infer.floor import FloorEstimate, estimate_floor
from mpnet_model.infer.instances import (
    DEFAULT_AREA_VOXEL,
    SizeFilter,
    instance_options,
    instance_summaries,
    join_fragments,
    per_class_values,
)
from mpnet_model.infer.meanshift import mean_shift_blocks
from mpnet_model.infer.merging import block_merging, join_across_borders

DEFAULT_MIN_BLOCK_POINTS = 20      # sparse lidar blocks still get a prediction (training uses 100)
DEFAULT_MIN_INSTANCE_POINTS = 50
DEFAULT_MERGE_GAP = 0.005          # BlockMerging voxel edge [m]
DEFAULT_LAYOUT = 'adaptive'        # block layout (see mpnet_model.infer.blocking and docs/frame_layouts.md)
DEFAULT_SPARSE_POINTS = True       # sparse blocks sampled to fewer points when the backend takes them
DEFAULT_BORDER_JOIN = 0.2          # join instances across borders of blocks that never saw them together [m]; 0 off
# Torch intra-op threads of the stages around the network on the CPU (blocking, mean shift, merging, projection:
# thousands of small ops). Measured on the 2-core machine with other jobs running: mean shift of 8 dense office
# blocks 0.05 s on one thread, 2.7 s on two (OpenMP workers wait on descheduled peers at every small op); the
# whole office scan 1.7 s instead of 17.5 s. None = leave torch's setting.
POSTPROCESS_CPU_THREADS = 1
# Nearest sampled point on CUDA: brute force in chunks of at most this many query x reference distances.
_NEAREST_CHUNK_ELEMENTS = 1 << 26
@dataclass
class InstanceInfo:
    id: int
    class_id: int
    class_name: str
    centre: np.ndarray        # (3,) axis-aligned bounding-box centre
    extent: np.ndarray        # (3,) bounding-box size
    num_points: int
    score: float              # mean semantic confidence of the instance's points
    # Issue 23 (mpnet_model/infer/instances.py): the mean probability of the instance's class over its points, and
    # the oriented box (yaw about +z of the segmented frame; orientation as quaternion x, y, z, w in the result's
    # frame, which differs from the pure yaw only when the cloud was levelled first).
    confidence: float = float('nan')
    box_centre: np.ndarray | None = None      # (3,)
    box_extent: np.ndarray | None = None      # (3,) along the box axes, x = the longer horizontal side
    box_yaw: float = 0.0                      # [rad] in [-pi/2, pi/2)
    box_orientation: np.ndarray | None = None  # (4,)


@dataclass
class SceneResult:
    labels: np.ndarray        # (N,) int32 class ids, -1 where nothing could be predicted
    scores: np.ndarray        # (N,) float32 probability of the label
    instances: np.ndarray     # (N,) int32, -1 = no instance
    instances_info: list[InstanceInfo] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)   # milliseconds per stage
    num_blocks: int = 0       # blocks segmented
    floor: FloorEstimate | None = None   # the floor the location channels used (input encoding 'floor')
    probabilities: np.ndarray | None = None   # (N, C) float32 class probabilities, when asked for (semantic map)

    @classmethod
    def empty(cls, num_points: int, timings: dict[str, float] | None = None) -> SceneResult:
        return cls(np.full(num_points, -1, np.int32), np.zeros(num_points, np.float32),
                   np.full(num_points, -1, np.int32), [], dict(timings or {}))


INTENSITY_REFERENCE_RANGE = 8.0    # m: the returns whose percentiles scale the intensity (see the module docstring)
INTENSITY_REFERENCE_MIN = 100


def intensity_to_grey(intensity: np.ndarray, xyz: np.ndarray | None = None, origin=None) -> np.ndarray:
    """(N,) intensity -> (N,3) float32 grey in [0,1], scaled between the 1st and 99th percentile of the returns
    within INTENSITY_REFERENCE_RANGE of the sensor at `origin` (default the frame's origin) when `xyz` (N,3) is
    given and enough of them are that near, else of all returns."""
    reference = intensity
    if xyz is not None:
        offset = np.asarray(xyz, np.float64) - np.asarray((0.0, 0.0, 0.0) if origin is None else origin, np.float64)
        near = np.einsum('ij,ij->i', offset, offset) < INTENSITY_REFERENCE_RANGE ** 2
        if near.sum() >= INTENSITY_REFERENCE_MIN:
            reference = intensity[near]
    low, high = np.percentile(reference, [1.0, 99.0])
    grey = np.clip((intensity - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)
    return np.repeat(grey[:, None], 3, axis=1)


class SceneSegmenter:
    """Segments whole clouds with any `Backend`. Deterministic for a fixed `seed` (block sampling) and device.

    layout: which blocks are segmented (`mpnet_model.infer.blocking.LAYOUTS`). batch_size: blocks per backend
    call; None = the backend's chunk policy (`Backend.frame_chunk`: measured best batch on the CPU, sized from
    free memory on CUDA). sampler: block sampling with 'numpy' (CPU only) or 'torch'; 'auto' = numpy on the CPU;
    'legacy' = the per-block draw of the path before issue 12 (its answers, for references and tests).
    sparse_points: sample blocks of fewer points than the model's P to a smaller P (`point_buckets`) when the
    backend takes it (fewer repeated points: less inference and mean-shift work on sparse lidar blocks).
    border_join: after BlockMerging, join same-class instances touching within this distance [m] across the
    border of blocks that never held both sides (`merging.join_across_borders`; tiled sparse blocks); 0 = off.
    sync_timings (class attribute): on CUDA, synchronise the device at every stage of the timings (host-side stage
    times, ~5 extra syncs a frame); default off: the stages are timed with CUDA events, read after the frame's one
    output copy (docs/gpu_syncs.md).
    """

    sync_timings = False

    def __init__(self, backend: Backend, block_size: float = 1.0, stride: float = 0.5, num_points: int | None = None,
                 batch_size: int | None = None, bandwidth: float = 0.6,
                 min_instance_points: int = DEFAULT_MIN_INSTANCE_POINTS, seed: int = 0,
                 min_block_points: int = DEFAULT_MIN_BLOCK_POINTS, lidar_colour: str = 'intensity',
                 merge_gap: float = DEFAULT_MERGE_GAP, class_min_points: np.ndarray | None = None,
                 layout: str = DEFAULT_LAYOUT, sampler: str = 'auto', sparse_points: bool = DEFAULT_SPARSE_POINTS,
                 border_join: float = DEFAULT_BORDER_JOIN, size_filter: str = 'points',
                 class_min_area: np.ndarray | None = None, area_voxel: float = DEFAULT_AREA_VOXEL,
                 fragment_join: float = 0.0):
        if num_points is not None and num_points != backend.num_points:
            raise ValueError(f'num_points={num_points} but the model ({backend.source}) takes {backend.num_points} '
                             'points per block')
        if (batch_size is not None and batch_size < 1) or bandwidth <= 0 or min_instance_points < 1 \
                or min_block_points < 1:
            raise ValueError(f'batch_size={batch_size}, bandwidth={bandwidth}, min_instance_points='
                             f'{min_instance_points}, min_block_points={min_block_points}: all must be positive')
        if lidar_colour not in ('intensity', 'grey'):
            raise ValueError(f"lidar_colour={lidar_colour!r}: choose 'intensity' or 'grey'")
        if layout not in LAYOUTS:
            raise ValueError(f'layout={layout!r}: choose one of {LAYOUTS}')
        if not 0 <= fragment_join <= block_size:
            raise ValueError(f'fragment_join={fragment_join!r}: a distance in [0, block_size] metres (0 = off)')
        if not 0 <= border_join < block_size / 2:
            raise ValueError(f'border_join={border_join!r}: a distance in [0, block_size / 2) metres (0 = off)')
        if sampler not in SAMPLERS:
            raise ValueError(f'sampler={sampler!r}: choose one of {SAMPLERS}')
        self.backend = backend
        self.block_size, self.stride = float(block_size), float(stride)
        self.num_points = backend.num_points
        self.batch_size = None if batch_size is None else int(batch_size)
        self.bandwidth = float(bandwidth)
        self.min_instance_points, self.min_block_points = int(min_instance_points), int(min_block_points)
        self.seed, self.lidar_colour = int(seed), lidar_colour
        self.merge_gap = float(merge_gap)
        self.layout, self.sampler = layout, sampler
        self.sparse_points = bool(sparse_points)
        self.border_join = float(border_join)
        self.fragment_join = float(fragment_join)      # join touching same-class instances [m] (instances.py)
        # Optional per-class minimum instance size (points), e.g. ASIS's 0.25 x the training set's mean instance
        # size of the class: evaluation uses it; on a robot the density differs, so min_instance_points rules.
        self.class_min_points = None
        if class_min_points is not None:
            self.class_min_points = np.asarray(class_min_points, dtype=np.float64).reshape(-1)
            if self.class_min_points.shape[0] != len(backend.class_names):
                raise ValueError(f'class_min_points has {self.class_min_points.shape[0]} entries for '
                                 f'{len(backend.class_names)} classes')
        # Which per-class size filter runs (mpnet_model/infer/instances.py): 'points' (class_min_points), 'area'
        # (class_min_area [m^2] of occupied voxels of edge area_voxel: survives range and density) or 'off'.
        self.class_min_area = per_class_values(class_min_area, 'class_min_area', len(backend.class_names))
        self.area_voxel = float(area_voxel)
        self.size_filter = SizeFilter(size_filter, {'points': self.class_min_points, 'area': self.class_min_area,
                                                    'off': None}.get(size_filter), self.area_voxel)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.backend.class_names

    @property
    def point_buckets(self) -> tuple[int, ...]:
        """Points per block the blocks are sampled to: the backend's buckets with `sparse_points` (sparse blocks
        get fewer repeats), else the model's num_points only. The legacy draw always uses num_points."""
        if not self.sparse_points or self.sampler == 'legacy':
            return (self.num_points,)
        return self.backend.point_buckets()

    @property
    def input_encoding(self) -> str:
        return self.backend.metadata.input_encoding

    @property
    def device(self) -> torch.device:
        return torch.device(self.backend.device)

    def options(self) -> dict:
        """The constructor arguments (other than the backend) of this segmenter."""
        return dict(block_size=self.block_size, stride=self.stride, batch_size=self.batch_size,
                    bandwidth=self.bandwidth, min_instance_points=self.min_instance_points, seed=self.seed,
                    min_block_points=self.min_block_points, lidar_colour=self.lidar_colour,
                    merge_gap=self.merge_gap, class_min_points=self.class_min_points, layout=self.layout,
                    sampler=self.sampler, sparse_points=self.sparse_points, border_join=self.border_join,
                    size_filter=self.size_filter.kind, class_min_area=self.class_min_area, area_voxel=self.area_voxel,
                    fragment_join=self.fragment_join)

    def replace(self, **changes) -> SceneSegmenter:
        """A segmenter on the same backend with some options changed."""
        return SceneSegmenter(self.backend, **{**self.options(), **changes})

    @classmethod
    def from_config(cls, backend: str = 'onnxruntime', model_path: str | Path = '', device: str = 'cpu',
                    precision: str = 'fp32', backend_options: dict | None = None,
                    min_instance_fraction: float | None = None, size_filter: str | None = None,
                    sensor_kind: str | None = None, **segmenter_options) -> SceneSegmenter:
        """Build backend + segmenter in one call (the factory used by the node, bag tool and demo). Block geometry,
        bandwidth (the one tuned for `sensor_kind` when the model has it) and per-class size filter default to the
        model's metadata; explicit options win.
        `min_instance_fraction` replaces the model's tuned fraction of its class mean instance sizes (0 = no per-class
        filter, e.g. for crops and single sensor frames, whose instances are smaller than whole rooms').
        `size_filter` ('auto' / None, 'area', 'points', 'off') and `sensor_kind` ('lidar', 'rgbd', 'static': whose
        tuned area fraction and fragment join apply) choose the filter (`instances.instance_options`)."""
        runtime = make_backend(backend, model_path, device=device, precision=precision, **(backend_options or {}))
        metadata = runtime.metadata
        segmenter_options.setdefault('block_size', metadata.block_size)
        segmenter_options.setdefault('stride', metadata.stride)
        if min_instance_fraction is not None:
            if min_instance_fraction < 0:
                raise ValueError(f'min_instance_fraction={min_instance_fraction!r}: must be >= 0 (0 = no filter)')
            metadata = replace(metadata, min_instance_fraction=float(min_instance_fraction))
        for key, value in instance_options(metadata, size_filter, sensor_kind, min_instance_fraction).items():
            segmenter_options.setdefault(key, value)
        segmenter_options.setdefault('bandwidth', metadata.bandwidth_for(sensor_kind))
        return cls(runtime, **segmenter_options)

    def colours(self, num_points: int, rgb: np.ndarray | None, intensity: np.ndarray | None,
                xyz: np.ndarray | None = None, origin=None) -> np.ndarray:
        """The (N,3) colour channels: rgb, else intensity grey (see module docstring; scaled on the returns near
        the sensor at `origin` when `xyz` is given), else 0.5 grey."""
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
            return intensity_to_grey(intensity, xyz, origin)
        return np.full((num_points, 3), 0.5, dtype=np.float32)

    def check_cloud(self, xyz: np.ndarray, rgb: np.ndarray | None, intensity: np.ndarray | None, origin=None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Validate a cloud -> (xyz (N,3) float32, colour channels (N,3)); ValueError naming the defect."""
        xyz = np.asarray(xyz, dtype=np.float32)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f'xyz must have shape (N, 3), got {xyz.shape}')
        if not np.isfinite(xyz).all():
            raise ValueError('xyz contains NaN/inf points; drop invalid points before segmenting')
        return xyz, self.colours(xyz.shape[0], rgb, intensity, xyz, origin)

    def floor_of(self, xyz: np.ndarray, floor: float | None = None, origin=None) -> FloorEstimate | None:
        """The floor the location channels use for the z-up cloud `xyz`: `floor` when given (a known floor),
        else estimated (`mpnet_model.infer.floor.estimate_floor`, around the sensor at `origin` when given);
        None for encodings without a floor."""
        if not needs_floor(self.input_encoding):
            return None
        if floor is not None:
            if not np.isfinite(floor):
                raise ValueError(f'floor={floor!r}: a known floor height must be finite')
            return FloorEstimate.given(floor)
        return estimate_floor(xyz, origin)

    @torch.inference_mode()
    def segment(self, xyz: np.ndarray, rgb: np.ndarray | None = None, intensity: np.ndarray | None = None,
                floor: float | None = None, origin=None) -> SceneResult:
        """xyz (N,3) z-up, rgb (N,3) in [0,1] or None, intensity (N,) or None -> SceneResult for every input point.
        floor: a known floor height (z) in the cloud's frame, for the ``floor`` input encoding (None: estimated
        from the cloud, around the sensor position `origin` (3,) when given)."""
        device = self.device
        clock = _Clock(device, self.sync_timings)
        xyz, colours = self.check_cloud(xyz, rgb, intensity, origin)
        num_input = xyz.shape[0]
        if num_input < self.min_block_points:
            return SceneResult.empty(num_input, clock.finish())
        floor_estimate = self.floor_of(xyz, floor, origin)
        cloud = to_device(xyz, device)                                  # host -> device, once (non-blocking)
        cloud_colours = to_device(colours, device)
        with _cpu_threads(device, POSTPROCESS_CPU_THREADS):
            blocks = frame_blocks(cloud, cloud_colours, self.layout, self.block_size, self.stride,
                                  self.num_points, self.min_block_points, self.seed, self.sampler, self.point_buckets,
                                  self.input_encoding, None if floor_estimate is None else floor_estimate.z)
        clock.lap('blocks')
        if len(blocks) == 0:
            return replace(SceneResult.empty(num_input, clock.finish()), floor=floor_estimate)
        result = self.segment_blocks(cloud, blocks, clock)
        result.floor = floor_estimate
        return result

    @torch.inference_mode()
    def segment_partition(self, xyz: np.ndarray, colours: np.ndarray, partition: FramePartition,
                          floor: float | None = None, origin=None) -> SceneResult:
        """Segment the chosen blocks `partition` of the cloud xyz (N,3) with colour channels (N,3) (a subset of
        a fixed-frame grid, e.g. the dirty blocks of `mpnet_model.mapping`), with the class probabilities.
        floor / origin: as in `segment` (the floor of the ``floor`` encoding: given, or estimated from `xyz`)."""
        clock = _Clock(self.device, self.sync_timings)
        floor_estimate = self.floor_of(np.asarray(xyz), floor, origin)
        cloud = torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float32)).to(self.device)
        cloud_colours = torch.from_numpy(np.ascontiguousarray(colours, dtype=np.float32)).to(self.device)
        with _cpu_threads(self.device, POSTPROCESS_CPU_THREADS):
            blocks = sample_partition(cloud, cloud_colours, partition.to(self.device), list(self.point_buckets),
                                      self.seed, self.sampler, self.input_encoding,
                                      None if floor_estimate is None else floor_estimate.z)
        clock.lap('blocks')
        if len(blocks) == 0:
            return replace(SceneResult.empty(len(xyz), clock.finish()), floor=floor_estimate)
        result = self.segment_blocks(cloud, blocks, clock, with_probabilities=True)
        result.floor = floor_estimate
        return result

    @torch.inference_mode()
    def segment_blocks(self, cloud: torch.Tensor, blocks: FrameBlocks, clock: _Clock | None = None,
                       with_probabilities: bool = False) -> SceneResult:
        """The stages after blocking, for a cloud (N,3) tensor and its `FrameBlocks` on the backend's device.
        with_probabilities: also return every point's (N, C) class probabilities."""
        clock = clock or _Clock(cloud.device, self.sync_timings)
        outputs = [self.backend.run_frame(group.points, self.batch_size) for group in blocks.groups]
        clock.lap('inference')                                          # per group: (K,P,C) logits, (K,P,E)
        with _cpu_threads(cloud.device, POSTPROCESS_CPU_THREADS):
            block_instances = [self._cluster_blocks(embeddings) for _, embeddings in outputs]  # (K,P) local ids
            clock.lap('meanshift')
            probabilities = [torch.softmax(logits.float(), dim=-1) for logits, _ in outputs]    # (K,P,C)
            point_probs, point_instances = self._merge(cloud, blocks, probabilities, block_instances)
            clock.lap('merging')
            labels, scores, instances, boxes = self._project(cloud, point_probs, point_instances)
            clock.lap('projection')
            shapes = instance_summaries(cloud, instances, labels, scores, boxes[0].argmax(1))  # boxes, confidence
            clock.lap('instances')
        host = read_host(labels, scores, instances, *boxes, *shapes)    # device -> host, once (one packed copy)
        result = SceneResult(host[0].astype(np.int32), host[1].astype(np.float32), host[2].astype(np.int32))
        result.instances_info = self._instance_infos(*host[3:])
        if with_probabilities:
            result.probabilities = point_probs.cpu().numpy().astype(np.float32)
        result.timings = clock.finish()
        result.num_blocks = len(blocks)
        return result

    def _cluster_blocks(self, embeddings: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(mean_shift_blocks(embeddings.float().contiguous(), self.bandwidth),
                               device=embeddings.device)

    def _merge(self, cloud: torch.Tensor, blocks: FrameBlocks, probabilities: list[torch.Tensor],
               block_instances: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per group (K,P,C) probabilities and (K,P) local instance ids -> class probabilities (N,C) averaged over
        the samples of each point (NaN rows: never sampled), scene instance ids (N,) (-1 none)."""
        num_points, num_classes = cloud.shape[0], probabilities[0].shape[-1]
        sums = torch.zeros(num_points, num_classes, dtype=torch.float64, device=cloud.device)
        counts = torch.zeros(num_points, dtype=torch.int64, device=cloud.device)
        for group, probs in zip(blocks.groups, probabilities):
            flat_index = group.indices.reshape(-1)                                      # (K*P,)
            sums.index_add_(0, flat_index, probs.reshape(-1, num_classes).double())
            counts += _counts(flat_index, num_points)
        point_probs = (sums / counts[:, None]).float()                                  # NaN where count 0
        if len(blocks.groups) == 1:
            indices, instances = blocks.groups[0].indices, block_instances[0]
            labels = probabilities[0].argmax(-1)
        else:   # blocks of different sizes: frame order, padded (padding: instance -1, i.e. not in any group)
            indices, valid = blocks.padded_indices()
            instances = torch.full(indices.shape, -1, dtype=torch.int64, device=cloud.device)
            labels = torch.zeros(indices.shape, dtype=torch.int64, device=cloud.device)
            for group, probs, group_instances in zip(blocks.groups, probabilities, block_instances):
                size = group.indices.shape[1]
                instances[group.blocks, :size] = group_instances
                labels[group.blocks, :size] = probs.argmax(-1)
        instance_of_point = torch.as_tensor(block_merging(cloud, indices, instances, labels, gap=self.merge_gap,
                                                          validate=False), device=cloud.device)
        if self.border_join > 0:
            partition = blocks.partition
            instance_of_point = join_across_borders(
                cloud, instance_of_point, point_probs.argmax(1), partition.point_order, partition.pair_blocks(),
                partition.room_min[:2] + partition.origins, partition.block_size, self.border_join)
        return point_probs, instance_of_point

    def _nearest(self, references: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """(M,) index of the nearest of `references` (S,3) for each of `queries` (M,3): a k-d tree on the CPU,
        chunked brute force (one matmul per chunk) on a GPU. The brute force works in coordinates centred on the
        references' bounding box: |r|^2 - 2 q.r in float32 resolves squared distances to ~1e-7 |r|^2, i.e.
        1e-3 m^2 for a cloud 100 m from the origin but ~1e-7 x its own extent^2 once centred."""
        if _cpu_strategy(references.device):
            # One reference per distinct coordinate (first in order): coincident points cannot be split by a k-d
            # tree, so a degenerate cloud (500,000 points at one coordinate) made every query scan them all (1 s).
            refs = np.ascontiguousarray(references.numpy())
            rows = refs.view(np.dtype((np.void, refs.dtype.itemsize * refs.shape[1]))).reshape(-1)
            first = np.sort(np.unique(rows, return_index=True)[1])
            nearest = first[cKDTree(refs[first]).query(queries.numpy(), k=1)[1]]
            return torch.from_numpy(nearest.astype(np.int64))
        centre = ((references.amin(0).double() + references.amax(0).double()) / 2).to(references.dtype)
        references, queries = references - centre, queries - centre
        ref_sq = (references * references).sum(1)
        rows = max(1, _NEAREST_CHUNK_ELEMENTS // max(references.shape[0], 1))
        return torch.cat([(ref_sq[None, :] - 2.0 * chunk @ references.T).argmin(1)
                          for chunk in queries.split(rows)])

    def _project(self, cloud: torch.Tensor, point_probs: torch.Tensor, point_instances: torch.Tensor):
        """Sampled-point results -> every input point (nearest sampled point for the others), then the instance
        filter -> labels (N,), scores (N,), instances (N,), per-instance (votes, sizes, score sums, lower, upper)."""
        unsampled = torch.isnan(point_probs[:, 0])                                     # (N,)
        num_missing = int(read_host(unsampled.sum())[0])                                # the stage's one sync
        if num_missing:
            sampled = compact(~unsampled, unsampled.numel() - num_missing)              # (S,)
            missing = compact(unsampled, num_missing)
            source = sampled[self._nearest(cloud[sampled], cloud[missing])]
            point_probs[missing] = point_probs[source]
            point_instances[missing] = point_instances[source]
        scores, labels = point_probs.max(dim=1)
        instances, boxes = self._finalise_instances(cloud, labels, scores, point_instances)
        return labels, scores, instances, boxes

    def _finalise_instances(self, cloud: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                            instances: torch.Tensor):
        """Drop instances below `min_instance_points` (and below `class_min_points` of their majority class),
        renumber 0..K-1 (largest first, ties by old id); the class of an instance is the majority label of its
        points. -> (N,) new ids, and per kept instance (votes (K,C), sizes (K,), score sums (K,), lower (K,3),
        upper (K,3))."""
        device, num_classes = cloud.device, len(self.class_names)
        if self.fragment_join > 0:
            instances = join_fragments(cloud, instances, labels, self.fragment_join, num_classes)
        final = torch.full_like(labels, -1)
        # Instance ids lie in [-1, N): sizes per id over that range, then the present ids (as torch.unique), with
        # the two sizes the host needs read in one copy (no nonzero / unique / bincount syncs).
        is_valid = instances >= 0
        id_sizes = _counts(instances.clamp_min(0), instances.numel(), is_valid.long())   # (N,) points per id
        present = id_sizes > 0
        num_ids, num_valid = (int(v) for v in read_host(torch.stack([present.sum(), is_valid.sum()]))[0])
        valid = compact(is_valid, num_valid)
        ids = compact(present, num_ids)                                                   # ascending, as unique
        sizes = id_sizes[ids]
        inverse = (torch.cumsum(present, 0) - 1)[instances[valid]]
        keep = sizes >= self.min_instance_points
        if num_ids:
            keep &= self.size_filter.keep(cloud[valid], inverse, labels[valid], sizes, num_classes)
        order = torch.sort(-sizes, stable=True).indices                                # largest first, then id
        kept = keep[order]
        count, num_members = (int(v) for v in read_host(torch.stack([kept.sum(), torch.where(kept, sizes[order], 0)
                                                                                 .sum()]))[0])
        order = order[compact(kept, count)]
        new_id = torch.full_like(ids, -1)
        new_id[order] = torch.arange(count, device=device)
        final[valid] = new_id[inverse]
        members = compact(final >= 0, num_members)
        member_ids = final[members]
        votes = torch.zeros(count * num_classes, dtype=torch.int64, device=device)
        votes.index_add_(0, member_ids * num_classes + labels[members], torch.ones_like(member_ids))
        counts = _counts(member_ids, count)
        score_sum = torch.zeros(count, dtype=torch.float64, device=device).index_add_(0, member_ids,
                                                                                     scores[members].double())
        member_xyz = cloud[members]
        index = member_ids[:, None].expand(-1, 3)
        lower = torch.full((count, 3), torch.inf, device=device).scatter_reduce(0, index, member_xyz, 'amin')
        upper = torch.full((count, 3), -torch.inf, device=device).scatter_reduce(0, index, member_xyz, 'amax')
        return final, (votes.reshape(count, num_classes), counts, score_sum, lower, upper)

    def _instance_infos(self, votes: np.ndarray, counts: np.ndarray, score_sum: np.ndarray, lower: np.ndarray,
                        upper: np.ndarray, box_centre: np.ndarray, box_extent: np.ndarray, box_yaw: np.ndarray,
                        confidence: np.ndarray) -> list[InstanceInfo]:
        """InstanceInfo per kept instance from the per-instance arrays of `_finalise_instances` and
        `instances.instance_summaries` (oriented boxes, confidence)."""
        from mpnet_model.infer.instances import yaw_quaternion

        infos = []
        for instance_id in range(counts.shape[0]):
            class_id = int(votes[instance_id].argmax())
            infos.append(InstanceInfo(id=instance_id, class_id=class_id, class_name=self.class_names[class_id],
                                      centre=((lower[instance_id] + upper[instance_id]) / 2).astype(np.float32),
                                      extent=(upper[instance_id] - lower[instance_id]).astype(np.float32),
                                      num_points=int(counts[instance_id]),
                                      score=float(score_sum[instance_id] / counts[instance_id]),
                                      confidence=float(confidence[instance_id]),
                                      box_centre=box_centre[instance_id].astype(np.float32),
                                      box_extent=box_extent[instance_id].astype(np.float32),
                                      box_yaw=float(box_yaw[instance_id]),
                                      box_orientation=yaw_quaternion(float(box_yaw[instance_id]))))
        return infos


def postprocess_threads(device: torch.device | str):
    """The torch thread setting of the stages around the network (POSTPROCESS_CPU_THREADS on the CPU), for callers
    that prepare blocks themselves (e.g. `mpnet_model.mapping`)."""
    return _cpu_threads(torch.device(device), POSTPROCESS_CPU_THREADS)


@contextmanager
def _cpu_threads(device: torch.device, threads: int | None):
    """Run the block with `threads` torch intra-op threads when `device` is the CPU (restored afterwards)."""
    previous = torch.get_num_threads()
    change = device.type == 'cpu' and threads is not None and threads != previous
    if change:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(previous)


def _cpu_strategy(device: torch.device) -> bool:
    """True on the CPU (k-d tree nearest neighbours); tests switch it off to run the GPU strategy on a CPU."""
    return device.type == 'cpu'


class _Clock:
    """Stage timer: lap(name) records ms since the previous lap; finish() adds the total (host wall time).

    On the CPU the laps are host times. On CUDA (`_uses_events`) each lap records a CUDA event instead of waiting
    for the device: no host-device sync; finish() turns the events into device times per stage once the frame's
    output copy has synchronised (a last event not yet reached is waited for). With ``sync`` every lap
    synchronises the device and takes host times (the clock before issue 25)."""

    def __init__(self, device: torch.device | None = None, sync: bool = False):
        cuda = device is not None and device.type == 'cuda'
        self.sync = sync and cuda
        self.device = device
        self.events: list[tuple[str, object]] | None = None
        if self._uses_events(device) and not self.sync:
            self.events = [('', self._event())]
            self.events[0][1].record()
        self.start = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    @staticmethod
    def _uses_events(device: torch.device | None) -> bool:
        return device is not None and device.type == 'cuda'

    @staticmethod
    def _event():
        return torch.cuda.Event(enable_timing=True)

    def lap(self, name: str) -> None:
        if self.events is not None:
            event = self._event()
            event.record()
            self.events.append((name, event))
            return
        if self.sync:
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[name] = (now - self.last) * 1e3
        self.last = now

    def finish(self) -> dict[str, float]:
        if self.events is not None and len(self.events) > 1:
            last = self.events[-1][1]
            if not last.query():        # normally reached: the output copy synchronised after the last lap
                last.synchronize()
            for (_, begin), (name, end) in zip(self.events, self.events[1:]):
                self.timings[name] = begin.elapsed_time(end)
        self.timings['total'] = (time.perf_counter() - self.start) * 1e3
        return self.timings
