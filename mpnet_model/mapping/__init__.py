"""Semantic voxel map in the fixed frame (ROS-free): labels fused over time, only changed blocks segmented again.

`SemanticMapper` (mapper.py) ties together the voxels (voxels.py), the fusion maths (fusion.py), dirty-block
scheduling (schedule.py), instance ids on the map (instances.py) and map files (mapfile.py). docs/mapping.md has
the design and the measurements.
"""
from mpnet_model.mapping.mapfile import MapFileError
from mpnet_model.mapping.mapper import MapConfig, MapUpdate, SemanticMapper

__all__ = ['MapConfig', 'MapFileError', 'MapUpdate', 'SemanticMapper']
