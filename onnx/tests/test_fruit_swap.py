"""The fruit-swap simulator, its scripted expert, and demonstrations recorded as ROS 2 bags."""

import json
from pathlib import Path

import numpy as np
import pytest

from df_train.cli import main
from df_train.datagen.fruit_swap import TOPICS, read_demo_bag
from df_train.envs.fruit_swap import (APPLE, ORANGE, REST, SLOTS, FruitSwapEnv, ScriptedExpert, run_expert,
                                      swap_moves)


def test_swap_moves_go_through_the_free_slot_and_swap():
    for a, o in [(0, 1), (1, 0), (0, 2), (2, 1)]:
        where = {APPLE: a, ORANGE: o}
        for fruit, src, dst in swap_moves((a, o)):
            assert where[fruit] == src and dst not in where.values()
            where[fruit] = dst
        assert where == {APPLE: o, ORANGE: a}


def test_the_expert_swaps_every_start_arrangement_and_rests():
    starts = set()
    for seed in range(12):
        episode = run_expert(seed)
        starts.add(episode["start_slots"])
        assert episode["success"], seed
        assert np.linalg.norm(episode["state"][-1, :3] - REST) < 0.02
    assert len(starts) >= 4, "random start arrangements"


def test_the_end_state_looks_like_a_start_state():
    """Why the task needs memory: the front camera after a swap equals the front camera of the
    start that has the fruits the other way round, arm at rest in both."""
    env = FruitSwapEnv(seed=0)
    for action in ScriptedExpert(seed=1).actions(env):
        _, success, done = env.step(action)
        if done:
            break
    assert success
    end = env.render_front()
    other = FruitSwapEnv(seed=0)
    other.fruit_pos[APPLE, :2], other.fruit_pos[ORANGE, :2] = SLOTS[env.goal_slots[0]], SLOTS[env.goal_slots[1]]
    other.ee = env.ee.copy()
    assert np.array_equal(other.render_front(), end)


def test_nothing_is_grasped_from_above_and_a_dropped_fruit_lands_off_slot():
    env = FruitSwapEnv(seed=4)
    a = env.start_slots[0]
    env.step([*SLOTS[a], 0.2, 0.0])  # closing high above the apple
    assert env.held is None
    for _ in range(30):
        env.step([*SLOTS[a], 0.03, 1.0])
    for _ in range(5):
        env.step([*SLOTS[a], 0.03, 0.0])
    assert env.held == APPLE
    for _ in range(30):
        env.step([0.05, 0.45, 0.1, 0.0])
    env.step([0.05, 0.45, 0.1, 1.0])
    env.step([0.05, 0.45, 0.1, 1.0])
    assert env.held is None and env.slot_contents().count(APPLE) == 0


def test_bad_actions_are_refused_by_name():
    env = FruitSwapEnv(seed=0)
    with pytest.raises(ValueError, match=r"action: expected 4 finite values \[x, y, z, gripper\]"):
        env.step([0.1, 0.2, np.nan, 1.0])


def test_distractor_occludes_the_front_camera_only():
    plain, noisy = FruitSwapEnv(seed=5), FruitSwapEnv(seed=5, distractor=True)
    assert not np.array_equal(plain.render_front(), noisy.render_front())
    assert np.array_equal(plain.render_wrist(), noisy.render_wrist())


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_datagen_bags_round_trip(tmp_path, storage):
    out = tmp_path / "demos"
    assert main(["datagen", "fruit-swap", "--episodes", "2", "--seed", "7", "--storage", storage, "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["success_rate"] == 1.0 and [b["seed"] for b in manifest["bags"]] == [7, 8]
    assert all(len(b["sha256"]) == 64 for b in manifest["bags"])
    bag = read_demo_bag(out / "episode_0001")
    episode = run_expert(8)
    for role in ("state", "front", "wrist", "action"):
        assert np.array_equal(bag[role], episode[role]), role
    assert bag["dropped_steps"] == 0 and np.all(np.diff(bag["stamp_ns"]) == 100_000_000)
    # The same seed writes the same bag.
    again = tmp_path / "again"
    main(["datagen", "fruit-swap", "--episodes", "1", "--seed", "7", "--storage", storage, "--out", str(again)])
    assert json.loads((again / "manifest.json").read_text())["bags"][0]["sha256"] == manifest["bags"][0]["sha256"]


def test_a_bag_without_the_cameras_is_refused(tmp_path):
    from df_train import rosbag_io

    records = [rosbag_io.Record(TOPICS["state"], 1, rosbag_io.joint_state(1, [0, 0, 0, 1], [0, 0, 0, 0]))]
    rosbag_io.write_bag(tmp_path / "bag", records)
    with pytest.raises(ValueError, match="topics .*/camera/front/image_raw.* missing"):
        read_demo_bag(tmp_path / "bag")


def test_camera_images_are_read_by_step():
    from df_train import rosbag_io
    from df_train.datagen.fruit_swap import camera_image

    pixels = np.arange(32 * 32 * 3, dtype=np.uint32).astype(np.uint8).reshape(32, 32, 3)
    msg = rosbag_io.image(1, pixels)
    assert np.array_equal(camera_image(msg, "t"), pixels)
    # Rows padded to 100 bytes (a driver's alignment): the padding is skipped.
    padded = np.zeros((32, 100), dtype=np.uint8)
    padded[:, :96] = pixels.reshape(32, 96)
    msg.step, msg.data = 100, padded.reshape(-1)
    assert np.array_equal(camera_image(msg, "t"), pixels)
    msg.data = msg.data[:-1]
    with pytest.raises(ValueError, match=r"t: step 100 and 3199 data bytes, expected step >= 96 and step x height = 3200"):
        camera_image(msg, "t")


def test_a_larger_camera_image_is_resized_as_the_node_resizes_it():
    """The Rust test `area_resize_matches_its_python_twin_on_the_shared_fixture` resizes the same
    pattern to the same fixture."""
    from df_train import rosbag_io
    from df_train.datagen.fruit_swap import camera_image

    y, x, c = np.mgrid[0:45, 0:70, 0:3]
    pattern = ((7 * x + 13 * y + 5 * c) % 256).astype(np.uint8)
    fixture = Path(__file__).resolve().parents[2] / "tests/fixtures/area_resize_70x45_to_32.bin"
    expected = np.frombuffer(fixture.read_bytes(), dtype=np.uint8).reshape(32, 32, 3)
    assert np.array_equal(camera_image(rosbag_io.image(1, pattern), "t"), expected)


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    from df_train.datagen.fruit_swap import generate

    out = tmp_path_factory.mktemp("demos")
    generate(out, 3, seed=0)
    return out


def train_tiny(demos, out, tokens=16):
    """A few training steps of a tiny camera model on the demonstration bags (the observation
    and action sizes from their manifest)."""
    main(["train", "--bags", str(demos), "--out", str(out),
          "--frame-stack", "15", "--tokens", str(tokens), "--width", "32", "--depth", "1", "--heads", "2",
          "--steps", "3", "--batch", "4", "--timesteps", "100", "--stabilization-level", "3", "--quiet"])
    return out / "checkpoint.pt"


def test_demo_windows_hold_history_images_and_rest(demos):
    from df_train.data import DemoWindows
    from df_train.layout import TokenLayout

    layout = TokenLayout(observation_dim=4, action_dim=4, frame_stack=15)
    windows = DemoWindows(demos, layout, tokens=16, timesteps=1000)
    steps = [len(read_demo_bag(demos / f"episode_{i:04d}")["action"]) for i in range(3)]
    assert [len(e) for e in windows.episodes] == [-(-(n + 14) // 15) * 15 + 30 for n in steps], "+ 2 rest tokens"
    demo = read_demo_bag(demos / "episode_0000")
    assert np.array_equal(windows.images[0][2, 0], demo["front"][30]), "token j ends with observation 15 j"
    assert np.allclose(windows.episodes[0][15 * 2 + 14, 4:], demo["state"][30])
    rest = windows.episodes[0][-15:]
    assert np.allclose(rest, rest[0]), "the rest tokens repeat the last state and command"
    x, mask, inputs = windows.sample(np.random.default_rng(0), 64)
    assert x.shape == (64, 16, 15 * 8) and mask.shape == (64, 16)
    assert inputs["images"].shape == (64, 16, 2, 32, 32, 3) and inputs["image_level"].shape == (64, 16)
    level = inputs["image_level"]
    for i in range(64):
        seen = int((level[i] < 4).sum())
        assert seen >= 1 and np.all(level[i, :seen] < 4) and np.all(level[i, seen:] == 4), "past observed, future absent"
        assert not inputs["images"][i, seen:].any()
    assert (level == 0).any() and ((level > 0) & (level < 4)).any(), "clean and noisy observed images"
    k = inputs["k"]
    planning = [i for i in range(64) if np.all(np.diff(k[i, (level[i] < 4).sum():]) >= 0) and k[i, 0] < 50]
    assert 16 < len(planning) < 56, "about half the windows look like planning: observed clean, future rising"
    seen = (level < 4).sum(axis=1)
    assert 0.4 < (seen == 1).mean() < 0.8, "half the windows see one token only (where the images decide), plus chance"
    short = DemoWindows(demos, layout, tokens=4, timesteps=1000)
    _, _, inputs = short.sample(np.random.default_rng(1), 256)
    assert (inputs["image_level"] < 4).all(axis=1).any(), "fully observed windows (no future) are sampled too"


def test_training_reads_exactly_the_bags_the_manifest_lists_as_they_were_written(demos, tmp_path):
    import shutil

    from df_train.datagen.fruit_swap import generate, listed_bags

    assert [p.name for p in listed_bags(demos)] == [f"episode_{i:04d}" for i in range(3)]
    copy = tmp_path / "demos"
    shutil.copytree(demos, copy)
    # A smaller dataset generated into the same folder would leave the old bags behind.
    with pytest.raises(ValueError, match=r"out: .* holds bag folders this run would not rewrite \(\['episode_0001', "
                                         r"'episode_0002'\]\): generate into an empty folder"):
        generate(copy, 1, seed=0)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["bags"] = manifest["bags"][:1]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"bag folders \['episode_0001', 'episode_0002'\] are not in manifest.json"):
        listed_bags(copy)
    shutil.rmtree(copy / "episode_0001")
    shutil.rmtree(copy / "episode_0002")
    assert [p.name for p in listed_bags(copy)] == ["episode_0000"]
    # An edited bag no longer matches its digest.
    storage = next(f for f in (copy / "episode_0000").iterdir() if f.name != "metadata.yaml")
    storage.write_bytes(storage.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"episode_0000: its files no longer match manifest.json's sha256"):
        listed_bags(copy)


def test_train_from_bags(demos, tmp_path):
    import torch

    from df_train.train import load_checkpoint

    ckpt = load_checkpoint(train_tiny(demos, tmp_path / "run"))
    assert ckpt["config"]["bags"] == str(demos) and ckpt["step"] == 3
    from df_train.train import TrainConfig, build_model

    model = build_model(TrainConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    x0, eps = model(torch.zeros(1, 5, 120), torch.zeros(1, 5, dtype=torch.long),
                    images=torch.zeros(1, 5, 2, 32, 32, 3), image_level=torch.full((1, 5), 4))
    assert x0.shape == (1, 5, 120) and torch.isfinite(eps).all()
    with pytest.raises(ValueError, match="data / bags: expected exactly one training source"):
        main(["train", "--out", str(tmp_path / "none"), "--observation-dim", "4", "--action-dim", "4", "--quiet"])


def test_reference_policy_closed_loop(demos, tmp_path):
    from df_train.eval import fruit_swap

    checkpoint = train_tiny(demos, tmp_path / "run")
    results_path = tmp_path / "results.json"
    main(["eval", "fruit-swap", "--checkpoint", str(checkpoint), "--episodes", "1",
          "--configs", "memory,memoryless", "--out", str(results_path)])
    results = json.loads(results_path.read_text())
    assert set(results) == {"memory", "memoryless"}
    for r in results.values():
        assert r["episodes"] == 1 and r["plan_ms_p99"] >= r["plan_ms_p50"] > 0
        assert r["success_rate"] in (0.0, 1.0)
    # What the sampler is given: the whole history with memory, the present token without.
    seen = {}
    for memory in (True, False):
        policy = fruit_swap.ReferencePolicy(checkpoint, fruit_swap.PolicySettings(memory=memory))
        sample = policy.sampler.sample
        policy.sampler.sample = lambda x, rows, noise, memory=memory: seen.setdefault(memory, x.shape) and sample(x, rows, noise)
        env = FruitSwapEnv(seed=0)
        policy.reset()
        for _ in range(31):  # observations 0..30: three context tokens
            policy.observe(np.zeros(4), env.observe())
        assert policy.plan().shape == (15, 4)
    assert seen[True][1] == 3 + 2 and seen[False][1] == 1 + 2
    rows = fruit_swap.arrangement_probe(checkpoint, seeds=1)
    assert len(rows) == 6 and all(len(r) == 1 and len(r[0]) == 3 for r in rows.values())


def test_camera_model_exports_with_its_camera_contract(demos, tmp_path):
    import onnxruntime as ort
    import torch

    from df_train.export import METADATA_KEY, export, load_model

    checkpoint = train_tiny(demos, tmp_path / "run", tokens=4)
    recorded = torch.load(checkpoint, weights_only=False)["camera_inputs"]
    assert recorded == {"topics": {"front": "/camera/front/image_raw", "wrist": "/camera/wrist/image_raw"},
                        "noise_std_per_level": 0.15}, "as the run trained, for export"
    out = tmp_path / "fruit_swap.onnx"
    export(checkpoint, out)
    model, _, _ = load_model(checkpoint)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 120)).astype(np.float32)
    k = rng.integers(0, 100, (3, 2))
    images = rng.random((3, 2, 2, 32, 32, 3)).astype(np.float32)
    level = np.array([[0, 4], [2, 4], [0, 0]])
    cot = rng.standard_normal((3, 2, 120)).astype(np.float32)
    x_t = torch.from_numpy(x).requires_grad_(True)
    x0, eps = model(x_t, torch.from_numpy(k), images=torch.from_numpy(images), image_level=torch.from_numpy(level))
    (grad,) = torch.autograd.grad(x0, x_t, torch.from_numpy(cot))
    feeds = {"x_t": x, "k": k, "images": images, "image_level": level}
    denoise = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    vjp = ort.InferenceSession(str(out.with_suffix(".vjp.onnx")), providers=["CPUExecutionProvider"])
    got = denoise.run(None, feeds)
    np.testing.assert_allclose(got[0], x0.detach().numpy(), atol=1e-4)
    got = vjp.run(None, {**feeds, "cotangent": cot})
    np.testing.assert_allclose(got[2], grad.numpy(), atol=1e-4)
    meta = json.loads(denoise.get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert meta["contract_version"] == "1.1"
    assert [c["role"] for c in meta["cameras"]["inputs"]] == ["front", "wrist"]
    assert meta["cameras"]["inputs"][0] == {"role": "front", "topic": "/camera/front/image_raw", "encoding": "rgb8",
                                            "width": 32, "height": 32}
    assert meta["cameras"]["image_levels"] == 4
    # The Rust side loads the camera model and reports its cameras.
    import subprocess

    from .conftest import planner_binary

    run = subprocess.run([str(planner_binary()), "inspect", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "cameras      front /camera/front/image_raw rgb8 32x32, wrist /camera/wrist/image_raw rgb8 32x32; " \
           "image levels 0..3 observed, 4 absent" in run.stdout, run.stdout


def test_node_closed_loop_through_the_shipped_model(tmp_path):
    """`df-train eval fruit-swap --planner --config`: episodes through the Rust node's own loop
    with the shipped camera model; checks the plumbing and the results format, not the score
    (the README's table is 100 episodes per configuration)."""
    import json
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    subprocess.run(["cargo", "build", "--quiet"], cwd=root, check=True)
    out = tmp_path / "results.json"
    main(["eval", "fruit-swap", "--planner", str(root / "target/debug/df_planner"), "--config",
          str(root / "config/fruit_swap.yaml"), "--episodes", "2", "--configs", "memory,memoryless",
          "--workers", "2", "--out", str(out)])
    results = json.loads(out.read_text())
    assert set(results) == {"memory", "memoryless"}
    for name, r in results.items():
        assert r["episodes"] == 2 and len(r["successes"]) == 2 and 0.0 <= r["success_rate"] <= 1.0
        assert r["plan_ms_p50"] > 0 and r["tick_ms_p99_max"] >= 0
        assert r["fallback_ticks_mean"] == 0, "frames and state arrive every step: the tick never falls back"
    assert results["memoryless"]["serve_args"] == ["--context-tokens", "1"]


def test_eval_fruit_swap_needs_planner_and_config_together():
    with pytest.raises(SystemExit, match="--planner, --config and --out go together"):
        main(["eval", "fruit-swap", "--planner", "df_planner", "--episodes", "1"])


def test_eval_fruit_swap_checkpoint_takes_the_seed(monkeypatch, tmp_path):
    import df_train.eval.fruit_swap as fruit_swap

    calls = []
    monkeypatch.setattr(fruit_swap, "evaluate", lambda *args: calls.append(args))
    main(["eval", "fruit-swap", "--checkpoint", "c.pt", "--episodes", "2", "--seed", "7", "--out", str(tmp_path / "r.json")])
    assert calls[0][-1] == 10_007, "episode i uses env seed 10000 + seed + i, as the help says"


def test_replay_of_a_demonstration_bag_reports_planned_vs_recorded(demos, tmp_path):
    """`df_planner replay` on a recorded demonstration: both cameras and the end-effector state
    through the node's loop, the planned targets compared with the expert's commands."""
    import json
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    subprocess.run(["cargo", "build", "--quiet"], cwd=root, check=True)
    run = subprocess.run([str(root / "target/debug/df_planner"), "replay", "--config", str(root / "config/fruit_swap.yaml"),
                          "--bag", str(demos / "episode_0000"), "--out", str(tmp_path / "out.mcap"), "--json"],
                         capture_output=True, text=True, check=True)
    summary = json.loads(run.stdout)
    steps = len(read_demo_bag(demos / "episode_0000")["action"])
    for topic in ("/camera/front/image_raw", "/camera/wrist/image_raw", "/ee_state", "/commanded_action"):
        assert summary["topics"][topic]["used"] == steps, topic
    error = summary["planned_vs_recorded"]
    assert error["compared"] == steps and len(error["rmse_per_dim"]) == 4
    assert summary["diagnostics"]["plan_errors"] == 0 and summary["diagnostics"]["plans"] >= steps // 15
