"""ROS-free MPNet library: model, losses, data, training, evaluation, export, runtimes and post-processing."""

__version__ = '0.1.0'
