"""Launch df_planner on a Maze2D point mass: ros2 launch df_planner maze2d.launch.py maze:=medium_realtime

The node's behaviour is set by its YAML (config/maze2d_<maze>.yaml, documented field by field
there and in src/config.rs); the launch arguments below choose it, the namespace, the clock, the
ONNX Runtime library and the log level. On a CPU run the *_realtime configs: their plans land
within the replan interval, where the plain ones' (which the Maze2D tables measure with the
simulator waiting) arrive too late (docs/maze2d.md, "A planner that keeps up on this CPU").
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    maze = LaunchConfiguration("maze")
    # A path component made of a list needs launch from 2025 on: join the name as text instead.
    default_config = [PathJoinSubstitution([FindPackageShare("df_planner"), "config"]), "/maze2d_", maze, ".yaml"]
    return LaunchDescription([
        DeclareLaunchArgument(
            "maze", default_value="umaze_realtime",
            choices=["umaze_realtime", "medium_realtime", "large_realtime", "umaze", "medium", "large"],
            description="Which D4RL maze and planner (selects config/maze2d_<maze>.yaml and its model): "
                        "*_realtime keep up on 2 CPU cores; the plain ones are the Maze2D tables' "
                        "planners, whose MCG plans take their whole replan interval or longer there."),
        DeclareLaunchArgument(
            "config", default_value=default_config,
            description="Node YAML: model, planner (matrix, steps, horizon, MCG samples, guidance), "
                        "control (rate_hz, action_dt_s, fallback hold|stop), safety limits and timeouts, "
                        "camera, topics, serve (plan execution: diffused actions or PD, arrive-and-hold). "
                        "Overrides the maze choice."),
        DeclareLaunchArgument(
            "namespace", default_value="",
            description="The node's namespace: it moves the node's own topics (~/action, ~/plan: "
                        "<namespace>/df_planner/action); absolute topics in the config (/diagnostics) stay."),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false",
            description="Follow /clock for stamps and staleness (simulation or bag playback)."),
        DeclareLaunchArgument(
            "onnxruntime_library", default_value=EnvironmentVariable("ORT_DYLIB_PATH", default_value=""),
            description="libonnxruntime.so (sets ORT_DYLIB_PATH; default: the environment's). The config's "
                        "model.runtime.onnxruntime_library comes first; with neither, the one scripts/setup.sh installed."),
        DeclareLaunchArgument(
            "log_level", default_value="info",
            description="RUST_LOG-style filter for the node's tracing output (e.g. info, df_planner=debug)."),
        Node(
            package="df_planner",
            executable="df_planner",
            name="df_planner",
            namespace=LaunchConfiguration("namespace"),
            arguments=["run"],
            parameters=[{
                "config": LaunchConfiguration("config"),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            }],
            additional_env={"RUST_LOG": LaunchConfiguration("log_level"), "ORT_DYLIB_PATH": LaunchConfiguration("onnxruntime_library")},
            output="screen",
            emulate_tty=True,
        ),
    ])
