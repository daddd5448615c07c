"""The fruit-swap simulator, its scripted expert, and demonstrations recorded as ROS 2 bags."""

import json

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
