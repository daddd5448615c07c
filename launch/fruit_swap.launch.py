"""Launch df_planner on an arm for the fruit swap: ros2 launch df_planner fruit_swap.launch.py

The node's behaviour is set by its YAML (config/fruit_swap.yaml, documented field by field
there and in src/config.rs): the camera model with memory, its two cameras (front and wrist,
32x32 per the model's contract; larger images are averaged down), the end-effector state, the commanded
target and the safety limits. The launch arguments choose the YAML, remap the arm's topics onto
the ones the model was trained with, and set the namespace, the clock and logging.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    default_config = PathJoinSubstitution([FindPackageShare("df_planner"), "config", "fruit_swap.yaml"])
    arg = LaunchConfiguration
    return LaunchDescription([
        DeclareLaunchArgument(
            "config", default_value=default_config,
            description="Node YAML: model (onnx/models/fruit_swap.onnx), planner (memory: context_tokens, "
                        "horizon, image_level), control (10 Hz, fallback hold), safety (workspace box, rates, "
                        "camera and state timeouts), camera (required, ring capacity), topics."),
        DeclareLaunchArgument(
            "front_camera", default_value="/camera/front/image_raw",
            description="The arm's front camera (sensor_msgs/Image: rgb8, bgr8, rgba8, bgra8 or mono8; a larger image is "
                        "centre-cropped to square and averaged down to 32x32, camera.resize: area), remapped onto the model's front topic."),
        DeclareLaunchArgument(
            "wrist_camera", default_value="/camera/wrist/image_raw",
            description="The arm's wrist camera (sensor_msgs/Image: rgb8, bgr8, rgba8, bgra8 or mono8; a larger image is "
                        "centre-cropped to square and averaged down to 32x32, camera.resize: area), remapped onto the model's wrist topic."),
        DeclareLaunchArgument(
            "ee_state", default_value="/ee_state",
            description="End-effector state (sensor_msgs/JointState with joints named ee_x, ee_y, ee_z, gripper: "
                        "topics.state_joints in the config reads them by name; a state without them holds the arm)."),
        DeclareLaunchArgument(
            "action", default_value="~/action",
            description="Where the commanded [x, y, z, gripper] goes (std_msgs/Float64MultiArray; ~/action is "
                        "<namespace>/df_planner/action)."),
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
                "config": arg("config"),
                "use_sim_time": ParameterValue(arg("use_sim_time"), value_type=bool),
            }],
            remappings=[
                ("/camera/front/image_raw", arg("front_camera")),
                ("/camera/wrist/image_raw", arg("wrist_camera")),
                ("/ee_state", arg("ee_state")),
                ("~/action", arg("action")),
            ],
            additional_env={"RUST_LOG": arg("log_level"), "ORT_DYLIB_PATH": arg("onnxruntime_library")},
            output="screen",
            emulate_tty=True,
        ),
    ])
