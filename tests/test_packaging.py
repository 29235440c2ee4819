"""The ament_python package installs what ROS 2 tooling looks for: index marker, package.xml, launch, config, lib/."""
import importlib
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp('wheel')
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w', str(out),
                    str(ROOT)], check=True, cwd=out)
    (path,) = out.glob('mpnet_ros-*.whl')
    return zipfile.ZipFile(path)


def test_wheel_installs_ament_files(wheel):
    names = set(wheel.namelist())
    data = next(n.split('/data/')[0] for n in names if '.data/data/' in n) + '/data/'
    expected = ['share/ament_index/resource_index/packages/mpnet_ros', 'share/mpnet_ros/package.xml',
                'share/mpnet_ros/launch/segment.launch.py', 'share/mpnet_ros/config/segment.yaml',
                'share/mpnet_ros/config/mpnet.rviz', 'lib/mpnet_ros/segment']
    missing = [e for e in expected if data + e not in names]
    assert not missing, f'wheel lacks {missing}'
    assert 'mpnet_model/config.py' in names and 'mpnet_ros/segment_node.py' in names


def test_wheel_ships_default_model(wheel):
    assets = {info.filename: info.file_size for info in wheel.infolist()
              if info.filename.startswith('mpnet_model/assets/')}
    assert any(n.endswith('.pt') for n in assets) and any(n.endswith('.onnx') for n in assets), assets
    assert 'mpnet_model/assets/MODEL_CARD.md' in assets
    assert all(size < 5_000_000 for size in assets.values()), assets      # a few MB: keep the repo light


def test_package_xml_is_format3_with_runtime_deps():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'mpnet_ros'
    deps = {e.text for e in root if e.tag.endswith('depend')}
    for dep in ('rclpy', 'sensor_msgs', 'visualization_msgs', 'std_msgs', 'diagnostic_msgs', 'launch_ros',
                'python3-numpy', 'python3-sklearn', 'launch_pytest'):
        assert dep in deps, dep
    assert root.find('export/build_type').text == 'ament_python'


def test_console_scripts_resolve():
    from importlib.metadata import entry_points

    scripts = [ep for ep in entry_points(group='console_scripts') if ep.value.startswith(('mpnet_model', 'mpnet_ros'))]
    assert {ep.name for ep in scripts} >= {'mpnet-train', 'mpnet-eval', 'mpnet-export', 'mpnet-bag', 'mpnet-demo'}
    for ep in scripts:
        module, attr = ep.value.split(':')
        assert callable(getattr(importlib.import_module(module), attr)), ep.value


def test_node_executable_is_executable():
    script = ROOT / 'scripts' / 'segment'
    assert script.stat().st_mode & 0o111
    assert 'mpnet_ros.segment_node' in script.read_text()


def test_model_card_matches_the_shipped_model():
    """The card's settings line and post-processing line state what the shipped checkpoint and ONNX file hold."""
    import re

    from mpnet_model.default_model import DEFAULT_CHECKPOINT
    from mpnet_model.infer.backends.base import make_backend
    from mpnet_model.model.checkpoint import read_checkpoint

    card = (ROOT / 'mpnet_model' / 'assets' / 'MODEL_CARD.md').read_text()
    checkpoint = read_checkpoint(DEFAULT_CHECKPOINT)
    model = checkpoint['config']
    for key in ('dis_norm', 'level0_features', 'embed_dropout', 'memory_scale', 'feature_dim', 'mem_per_class'):
        stated = re.search(rf'`{key}: ([^`]+)`', card)
        assert stated, f'the model card does not state {key}'
        assert stated.group(1) == str(model[key]), (key, stated.group(1), model[key])
    tuned = re.search(r'bandwidth ([0-9.]+), size fraction ([0-9.]+) \(stored', card)
    assert tuned, 'the model card does not state the stored post-processing'
    extra = checkpoint['extra']
    assert (float(tuned.group(1)), float(tuned.group(2))) == (extra['cluster_bandwidth'],
                                                              extra['min_instance_fraction'])
    onnx = make_backend('onnxruntime', '').metadata                   # the exported file carries the same values
    assert (onnx.cluster_bandwidth, onnx.min_instance_fraction) == (extra['cluster_bandwidth'],
                                                                    extra['min_instance_fraction'])
