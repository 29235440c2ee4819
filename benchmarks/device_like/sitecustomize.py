"""Dry run of benchmarks/gpu_session.sh (GPU_SESSION_ALLOW_CPU=1) only: this folder goes first on PYTHONPATH so
that Python imports this file at start-up, and the modules the GPU machine lacks (no ROS, rosbags, pypcd4,
onnxconverter-common, TensorRT, Open3D; see the device README's KINDS.md package list) fail to import here too.
A script that would break there for want of one of them breaks in the dry run instead."""
import importlib.abc
import importlib.util
import sys

ABSENT_ON_DEVICE = frozenset({
    'rosbags', 'rclpy', 'rosidl_runtime_py', 'rosidl_parser', 'sensor_msgs', 'sensor_msgs_py', 'std_msgs',
    'geometry_msgs', 'visualization_msgs', 'builtin_interfaces', 'tf2_ros', 'launch', 'launch_ros', 'launch_pytest',
    'launch_testing', 'pypcd4', 'onnxconverter_common', 'tensorrt', 'open3d', 'trimesh', 'embreex', 'rerun'})


class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if _absent(name):
            raise ModuleNotFoundError(f'No module named {name!r} (absent on the GPU machine: gpu_session dry run)',
                                      name=name)
        return None


def _absent(name: str) -> bool:
    return name.partition('.')[0] in ABSENT_ON_DEVICE


_find_spec = importlib.util.find_spec


def _find_spec_absent(name, package=None):      # `find_spec(name) is None` is how code asks "is it installed?"
    return None if _absent(name) else _find_spec(name, package)


importlib.util.find_spec = _find_spec_absent
sys.meta_path.insert(0, _Absent())
