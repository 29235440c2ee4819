"""Semantic map mode of the shared pipeline (ROS-free): each window is integrated into a `SemanticMapper`
(mpnet_model.mapping) and labelled from it, within the frame budget (the run set is capped at the block cap).

The map lives in the window's frame: `fixed_frame` through the injected transforms (tf2 on a robot, known poses in
tests and benchmarks), or the sensor's own frame when `fixed_frame` is empty (a static sensor). Gravity alignment
is not applied in this mode: the map's frame is taken as z-up (a tf fixed frame is).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from mpnet_ros.params import SegmentParams


def map_config(params: SegmentParams) -> Any:
    from mpnet_model.mapping import MapConfig

    return MapConfig(voxel_size=params.map_voxel_size, radius=params.map_radius, max_voxels=params.map_max_voxels,
                     dirty_fraction=params.map_dirty_fraction, min_changed=params.map_min_changed,
                     change_cell=max(params.map_change_cell, params.map_voxel_size))


def make_mapper(params: SegmentParams, segmenter: Any) -> Any:
    """The mapper for `params` (None when mapping is off), loaded from map_load_path when set (raises
    FileNotFoundError / MapFileError naming the file)."""
    if not params.mapping:
        return None
    from mpnet_model.mapping import SemanticMapper

    mapper = SemanticMapper(segmenter, map_config(params))
    if params.map_load_path:
        mapper.load(params.map_load_path)
    return mapper


def reconfigured_mapper(old: Any, params: SegmentParams, segmenter: Any, tags: set[str]) -> Any:
    """The mapper after a parameter change: a new one when the change rebuilds the map (or the model's classes or
    the block grid changed), else the old one with the new segmenter and bounds."""
    from mpnet_model.infer.blocking import layout_stride

    same_grid = old is not None and (old.segmenter.block_size, old.stride) == (
        segmenter.block_size, layout_stride(segmenter.layout, segmenter.block_size, segmenter.stride))
    if 'map' in tags or not same_grid or tuple(old.class_names) != tuple(segmenter.class_names):
        return make_mapper(params, segmenter)
    old.segmenter = segmenter
    if 'map_config' in tags:
        old.configure(map_config(params))
    return old


def map_window(pipeline: Any, window: Any, start: float) -> Any:
    """Integrate `window` into the pipeline's map and label it from the map -> SegmentedWindow (with `.map`)."""
    from mpnet_ros.pipeline import SegmentedWindow

    colours = pipeline.segmenter.colours(len(window.xyz), window.rgb, window.intensity, window.xyz, window.origin)
    cap = pipeline.block_cap()
    prepared = time.perf_counter()
    floor = pipeline.segmenter.floor_of(window.xyz, pipeline.known_floor(window), window.origin)  # None: 'room'
    update = pipeline.mapper.update(window.xyz, colours, np.asarray(window.origin), max_blocks=cap,
                                    floor=None if floor is None else floor.z)
    if update.blocks_run:
        pipeline.cost.update(update.blocks_run, update.timings['segment'])
    timings = {f'map/{k}': float(v) for k, v in update.timings.items()}
    timings.update(prepare_ms=(prepared - start) * 1e3, segment_ms=update.timings['total'],
                   total_ms=(time.perf_counter() - start) * 1e3)
    return SegmentedWindow(stamp_ns=window.stamp_ns, frame_id=window.frame_id, xyz=window.xyz, labels=update.labels,
                           instances=update.instances, scores=update.scores, instances_info=update.instances_info,
                           num_frames=window.num_frames, num_segmented=len(window.xyz), blocks=update.blocks_run,
                           timings=timings, map=update)


def save_map(pipeline: Any, path: str = '') -> str:
    """Write the pipeline's map to `path` (default map_save_path), atomically, between two frames; returns what
    was done. Raises ValueError when mapping is off or no path is set, OSError when the write fails."""
    mapper, path = pipeline.mapper, path or pipeline.params.map_save_path
    if mapper is None:
        raise ValueError('mapping is off: there is no map to save')
    if not path:
        raise ValueError('map_save_path is empty: set it to a .npz or .ply file')
    with pipeline._lock:                       # the worker updates the map under the same lock
        mapper.save(path)
        return f'saved the map ({len(mapper):,} voxels) to {path}'
