"""Thin ROS 2 adapter over `mpnet_model`: node, message conversion, parameters, bag tool."""
