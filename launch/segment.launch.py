"""Start the MPNet segment node (and optionally RViz).

    ros2 launch mpnet_ros segment.launch.py input_topic:=/ouster/points model_path:=/path/model.pt rviz:=true

Arguments: input_topic (remaps ~/input), params_file (default: share/mpnet_ros/config/segment.yaml),
model_path and backend (override the params file when not empty), use_sim_time, rviz (false: true starts rviz2 with
config/mpnet.rviz and the params file's fixed_frame, when set, as its fixed frame), sigterm_timeout and
sigkill_timeout (the stop's grace periods, below).

Exit status (mpnet_ros/supervision.py has the rule): when the node exits non-zero (it refuses to start on a bad
parameter or model file, or raises) or dies of a signal (kill -9, SIGSEGV, an OOM kill), the launch shuts down and
`ros2 launch` exits with 1 (launch turns the handler's error into its return code). After Ctrl-C, SIGINT or SIGTERM
to `ros2 launch` it exits with 0: the node gets SIGINT, after sigterm_timeout s (default 5) SIGTERM, after
sigkill_timeout s more (default 5) SIGKILL; a node that had to be killed makes the exit 1. The node is also told to
stop (SIGTERM) by the kernel if `ros2 launch` itself is killed (PR_SET_PDEATHSIG), so it is never orphaned.
"""
from pathlib import Path

import launch.logging
import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from mpnet_ros.supervision import STOP_WITH_PARENT_ENV, describe_exit, exit_is_failure, route_sigterm_to_shutdown

PACKAGE = 'mpnet_ros'


def _fixed_frame(params_file: str) -> str:
    """fixed_frame from the params file ('' when unset or unreadable: RViz then keeps its config's frame)."""
    try:
        data = yaml.safe_load(Path(params_file).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ''
    for section in data.values():
        if isinstance(section, dict) and section.get('ros__parameters', {}).get('fixed_frame'):
            return str(section['ros__parameters']['fixed_frame'])
    return ''


class NodeFailed(RuntimeError):
    """The segment node exited non-zero or died of a signal; launch reports it and `ros2 launch` exits 1."""


def _on_segment_exit(event, context):
    if exit_is_failure(event.returncode, stopping=context.is_shutdown):
        raise NodeFailed(f'{event.action.name} {describe_exit(event.returncode)} (see its output above)')
    return [Shutdown(reason=f'{event.action.name} exited')]


def _sigterm_like_sigint(context):
    route_sigterm_to_shutdown(context, launch.logging.get_logger('mpnet_ros.launch').warning)


def _nodes(context):
    params_file = LaunchConfiguration('params_file').perform(context)
    use_sim_time = LaunchConfiguration('use_sim_time').perform(context).lower() in ('true', '1')
    overrides = {'use_sim_time': use_sim_time}
    for name in ('model_path', 'backend'):       # non-empty launch arguments override the params file
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    segment = Node(package=PACKAGE, executable='segment', name='mpnet_segment', output='screen',
                   parameters=[params_file, overrides],
                   remappings=[('~/input', LaunchConfiguration('input_topic'))],
                   additional_env={STOP_WITH_PARENT_ENV: '1'},
                   sigterm_timeout=LaunchConfiguration('sigterm_timeout'),
                   sigkill_timeout=LaunchConfiguration('sigkill_timeout'))
    rviz_args = ['-d', str(Path(get_package_share_directory(PACKAGE)) / 'config' / 'mpnet.rviz')]
    frame = _fixed_frame(params_file)
    if frame:
        rviz_args += ['-f', frame]
    rviz = Node(package='rviz2', executable='rviz2', name='rviz2', arguments=rviz_args,
                parameters=[{'use_sim_time': use_sim_time}], condition=IfCondition(LaunchConfiguration('rviz')))
    return [segment, RegisterEventHandler(OnProcessExit(target_action=segment, on_exit=_on_segment_exit)), rviz]


def generate_launch_description():
    default_params = str(Path(get_package_share_directory(PACKAGE)) / 'config' / 'segment.yaml')
    return LaunchDescription([
        DeclareLaunchArgument('input_topic', default_value='/points', description='PointCloud2 topic to segment'),
        DeclareLaunchArgument('params_file', default_value=default_params, description='node parameters YAML'),
        DeclareLaunchArgument('model_path', default_value='', description='model file; overrides params_file'),
        DeclareLaunchArgument('backend', default_value='',
                              description='torch | onnxruntime | tensorrt; overrides params_file'),
        DeclareLaunchArgument('use_sim_time', default_value='false', description='use /clock (bag playback)'),
        DeclareLaunchArgument('rviz', default_value='false', description='also start rviz2'),
        DeclareLaunchArgument('sigterm_timeout', default_value='5',
                              description='stop: seconds from SIGINT to SIGTERM for the node'),
        DeclareLaunchArgument('sigkill_timeout', default_value='5',
                              description='stop: seconds from SIGTERM to SIGKILL for the node'),
        OpaqueFunction(function=_sigterm_like_sigint),
        OpaqueFunction(function=_nodes),
    ])
