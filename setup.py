"""ament_python package `mpnet_ros`: installs the ROS-free library `mpnet_model` and the ROS adapter `mpnet_ros`.

Builds with `colcon build` on a ROS 2 machine and with `pip install -e .` in a plain venv.
"""
from glob import glob

from setuptools import find_packages, setup

package_name = 'mpnet_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=['mpnet_model', 'mpnet_model.*', 'mpnet_ros', 'mpnet_ros.*']),
    package_data={'mpnet_model': ['assets/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.rviz') + glob('config/*.xml')),
        # launch_ros starts executables from lib/<pkg>/; pip puts console scripts in bin/, so ship the
        # node's executable explicitly (colcon uses the same file).
        ('lib/' + package_name, ['scripts/segment']),
    ],
    # Loose on purpose: robots bring their own torch (CUDA/Jetson builds).
    install_requires=['numpy', 'scipy', 'scikit-learn', 'pyyaml', 'tqdm', 'torch', 'onnx', 'onnxruntime',
                      'onnxconverter-common', 'rosbags', 'matplotlib', 'pypcd4'],
    # Simulated sensor data (mpnet-synth sensors) ray-casts with Embree; robots do not need it.
    extras_require={'sim': ['trimesh', 'embreex']},
    zip_safe=True,
    maintainer='mpnet_ros developers',
    maintainer_email='mpnet-ros@example.org',
    description='3D semantic and instance segmentation of point clouds with MPNet (ECCV 2020) for ROS 2.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'mpnet-train = mpnet_model.train.cli:main',
            'mpnet-eval = mpnet_model.eval.evaluate:main',
            'mpnet-export = mpnet_model.infer.export:main',
            'mpnet-bag = mpnet_ros.bag_tool:main',
            'mpnet-replay = mpnet_ros.replay:main',
            'mpnet-demo = mpnet_ros.demo:main',
            'mpnet-synth = mpnet_model.data.synthetic:main',
            'mpnet-analyse = mpnet_model.analysis.cli:main',
        ],
    },
)
