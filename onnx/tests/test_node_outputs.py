"""What the Rust node writes, read the way users read it: the replay MCAP through the Python
`mcap` reader with ROS 2 decoding, and the launch files' documented arguments."""

import ast
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import planner_binary

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("bag", ["pointmass_mcap", "pointmass_sqlite3"])
def test_replay_output_opens_in_python_mcap_with_ros2_decoding(tmp_path, bag):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    out = tmp_path / "out.mcap"
    run = subprocess.run(
        [planner_binary(), "replay", "--bag", ROOT / "tests/fixtures/bags" / bag, "--config", ROOT / "config/pointmass.yaml",
         "--out", out, "--json"],
        capture_output=True, text=True, env={**os.environ, "RUST_LOG": "error"},
    )
    assert run.returncode == 0, run.stderr
    counts = {}
    with out.open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            if channel.topic == "/df_planner/action":
                assert schema.name == "std_msgs/msg/Float64MultiArray"
                assert len(decoded.data) == 2 and all(-1.0 <= v <= 1.0 for v in decoded.data)
            if channel.topic == "/diagnostics":
                keys = {kv.key for kv in decoded.status[0].values}
                assert {"ticks", "fault.state_stale", "tick_latency.p99_ms", "frames.rejected_encoding"} <= keys
    assert counts["/df_planner/action"] > 250
    assert counts["/df_planner/plan"] >= 29
    assert counts["/diagnostics"] >= 1


def declared_launch_arguments(launch):
    """Each `DeclareLaunchArgument` in launch/`launch`: (name, its keyword arguments' nodes)."""
    tree = ast.parse((ROOT / "launch" / launch).read_text())
    return [(node.args[0].value, {k.arg: k.value for k in node.keywords}) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"]


@pytest.mark.parametrize("launch, arguments", [
    ("maze2d.launch.py", {"maze", "config", "use_sim_time", "onnxruntime_library", "log_level", "namespace"}),
    ("fruit_swap.launch.py", {"config", "front_camera", "wrist_camera", "ee_state", "action", "use_sim_time",
                              "onnxruntime_library", "log_level", "namespace"}),
])
def test_launch_file_documents_every_argument(launch, arguments):
    declared = declared_launch_arguments(launch)
    for name, kwargs in declared:
        assert "description" in kwargs, name
    assert {name for name, _ in declared} == arguments


def test_every_maze_the_launch_offers_has_its_config():
    """`maze:=X` loads config/maze2d_X.yaml: each choice, and the default among them, must exist."""
    maze = dict(declared_launch_arguments("maze2d.launch.py"))["maze"]
    kwargs = {k: ast.literal_eval(maze[k]) for k in ("choices", "default_value")}
    assert kwargs["default_value"] in kwargs["choices"]
    missing = [c for c in kwargs["choices"] if not (ROOT / "config" / f"maze2d_{c}.yaml").is_file()]
    assert not missing, missing


def test_fruit_swap_launch_remaps_the_config_topics():
    """Every topic the launch file remaps is one config/fruit_swap.yaml or the model uses."""
    from df_train.node_config import load_node_config

    text = (ROOT / "launch/fruit_swap.launch.py").read_text()
    cfg = load_node_config(ROOT / "config/fruit_swap.yaml")
    used = {cfg["topics"]["state"], cfg["topics"]["action"], "/camera/front/image_raw", "/camera/wrist/image_raw"}
    remapped = {ast.literal_eval(t.elts[0]) for node in ast.walk(ast.parse(text))
                if isinstance(node, ast.keyword) and node.arg == "remappings" for t in node.value.elts}
    assert remapped == used
