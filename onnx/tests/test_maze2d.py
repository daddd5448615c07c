import json
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")

from df_train import cli  # noqa: E402
from df_train.datagen import maze2d as gen  # noqa: E402
from df_train.envs import maze2d as env_mod  # noqa: E402
from df_train.envs.maze2d import (  # noqa: E402
    MAZES, Maze2DEnv, cell_to_xy, empty_cells, goal_cell, in_free_space, normalized_score, route_length, wall_depth, wall_grid,
    xy_to_cell)

DIRECTIONS = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)]


def test_layouts():
    sizes = {"umaze": (5, 5), "medium": (8, 8), "large": (9, 12)}
    goals = {"umaze": (1, 1), "medium": (6, 6), "large": (7, 9)}
    for maze in MAZES:
        walls = wall_grid(maze)
        assert walls.shape == sizes[maze] and walls.dtype == bool
        assert walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()
        assert goal_cell(maze) == goals[maze] and goals[maze] in empty_cells(maze)
        assert len(empty_cells(maze)) == (~walls).sum()


def test_cell_xy_round_trip():
    rng = np.random.default_rng(0)
    for maze in MAZES:
        for cell in empty_cells(maze):
            xy = cell_to_xy(cell)
            assert xy_to_cell(xy) == cell
            assert in_free_space(maze, xy, margin=0.1)
            centre = xy - env_mod.CELL_SHIFT  # anywhere in the cell's square maps back to the cell
            assert all(xy_to_cell(centre + d) == cell for d in rng.uniform(-0.49, 0.49, (20, 2)))
        for cell in map(tuple, np.argwhere(wall_grid(maze))):
            assert not in_free_space(maze, cell_to_xy(cell))
    assert not in_free_space("umaze", (-5.0, 1.0)) and not in_free_space("umaze", (1.0, 40.0))
    # Vectorized, with the 0.2 shift: the ball's centre reaches [i - 0.6, i + 0.2] in an open row.
    np.testing.assert_array_equal(in_free_space("umaze", [[1.0, 0.41], [1.0, 0.39], [1.0, 3.19], [1.0, 3.21]], 0.1),
                                  [True, False, True, False])


def test_route_length_keeps_to_the_corridors():
    # U-Maze: (3, 1) is 2 from the goal (1, 1) in a straight line, but 6 cells round the U.
    assert route_length("umaze", (3.0, 1.0), goal_cell("umaze")) == 6
    assert route_length("umaze", (3.15, 0.85), (1.05, 1.1)) == 6  # points count by the cell holding them
    assert route_length("umaze", (1.0, 3.0), (1.0, 3.0)) == 0
    assert route_length("medium", (1.0, 6.0), goal_cell("medium")) == 9
    assert route_length("medium", (6.0, 6.0), (1.0, 6.0)) == 9  # the same route back
    # Medium's farthest cells are 10 moves from the goal, Large's 18.
    assert max(route_length("medium", c, goal_cell("medium")) for c in empty_cells("medium")) == 10
    assert max(route_length("large", c, goal_cell("large")) for c in empty_cells("large")) == 18
    with pytest.raises(ValueError, match=r"no route in maze umaze from cell \(0, 0\) to cell \(1, 1\)"):
        route_length("umaze", (0.0, 0.0), (1.0, 1.0))  # a wall cell boxed in by walls


def test_wall_depth_is_the_distance_to_the_nearest_open_square():
    # U-Maze: wall cell (2, 1), square [1.3, 2.3] x [0.3, 1.3], lies between open (1, 1) and (3, 1)
    # and under wall (2, 2).
    # On the edge of an open square a point is at depth 0, though not in free space.
    depth = wall_depth("umaze", [[1.0, 1.0], [1.8, 0.8], [1.8, 1.2], [2.0, 1.0], [1.35, 0.8], [1.3, 1.0], [-5.0, 1.0]])
    np.testing.assert_allclose(depth, [0.0, 0.5, 0.5, 0.3, 0.05, 0.0, np.inf])
    assert not in_free_space("umaze", (1.3, 1.0))
    rng = np.random.default_rng(0)
    for maze in ("umaze", "medium"):
        shape = wall_grid(maze).shape
        xy = rng.uniform(-1.0, shape, (300, 2))
        depth = wall_depth(maze, xy)
        np.testing.assert_array_equal(depth > 0, ~in_free_space(maze, xy))
        # Against brute force: the distance to the nearest point of a fine grid over open space.
        grid = np.stack(np.meshgrid(*[np.arange(-1.0, n, 0.02) for n in shape]), -1).reshape(-1, 2)
        grid = grid[in_free_space(maze, grid)]
        nearest = np.linalg.norm(xy[:, None] - grid[None], axis=-1).min(1)
        exact = nearest < 0.45
        assert exact.sum() > 50 and np.all(depth[~exact] > 0.42)
        np.testing.assert_allclose(depth[exact], nearest[exact], atol=0.03)


def test_ball_cannot_pass_walls():
    for maze in MAZES:
        env = Maze2DEnv(maze, seed=1)
        for cell in empty_cells(maze):
            for direction in DIRECTIONS:
                env.reset(cell)
                path = np.array([env.step(direction)[0][:2] for _ in range(200)])
                # Contacts are soft: at full speed the ball sinks < 0.05 into a wall, never through.
                assert in_free_space(maze, path, margin=0.05).all(), (maze, cell, direction)


def test_sparse_reward_radius():
    env = Maze2DEnv("umaze", seed=0)
    for offset, expected in [((0.0, 0.0), 1.0), ((0.45, 0.0), 1.0), ((0.3, 0.35), 1.0), ((0.55, 0.0), 0.0),
                             ((0.0, 0.6), 0.0), ((0.4, 0.4), 0.0)]:
        env.reset()
        env.data.qpos[:] = env.goal + offset
        env.data.qvel[:] = 0.0
        assert env.step([0.0, 0.0])[1] == expected, offset


def test_episode_length_and_goals():
    for maze in MAZES:
        env = Maze2DEnv(maze, seed=0)
        env.reset()
        dones = [env.step([0.0, 0.0])[2] for _ in range(env.max_episode_steps)]
        assert dones.index(True) == {"umaze": 300, "medium": 600, "large": 800}[maze] - 1
        np.testing.assert_array_equal(env.goal, goal_cell(maze))
    env = Maze2DEnv("large", seed=0, multi_goal=True)
    goals = []
    for _ in range(10):
        env.reset()
        goals.append(env.goal.copy())
    assert len({xy_to_cell(g) for g in goals}) > 3
    assert all(in_free_space("large", g, margin=0.1) for g in goals)


def test_normalized_score():
    for maze in MAZES:
        low, high = env_mod.REF_SCORES[maze]
        assert normalized_score(maze, low) == pytest.approx(0.0)
        assert normalized_score(maze, high) == pytest.approx(100.0)


@pytest.mark.parametrize("maze", MAZES)
def test_expert_reaches_goal_from_every_cell(maze):
    """Q-iteration routes + waypoint controller + dynamics: the goal is reached from every start cell."""
    env = Maze2DEnv(maze, seed=2)
    for cell in empty_cells(maze):
        total, solved_at = gen.expert_episode(env, cell)
        assert solved_at is not None and solved_at < env.max_episode_steps, (maze, cell)
        assert total >= env.max_episode_steps - solved_at - 1, (maze, cell, total, solved_at)


def test_datagen_deterministic_and_segmented(monkeypatch):
    a, b = gen.generate("umaze", 5000, seed=3), gen.generate("umaze", 5000, seed=3)
    assert set(a) == {"observations", "actions", "rewards", "episode_starts", "goals"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["observations"], gen.generate("umaze", 5000, seed=4)["observations"])
    assert a["observations"].shape == (5000, 4) and a["actions"].shape == (5000, 2)
    assert a["observations"].dtype == np.float32 and a["episode_starts"].dtype == np.int64
    assert np.abs(a["actions"]).max() <= 1.0
    # One continuous run: no teleports, across segment boundaries too.
    assert np.abs(np.diff(a["observations"][:, :2], axis=0)).max() < 0.06
    goal = env_mod.goal_xy("umaze")
    np.testing.assert_array_equal(a["rewards"], np.linalg.norm(a["observations"][:, :2] - goal, axis=1) <= 0.5)

    # A short time limit forces timeouts: segments end when the target cell is reached or after limit + 1 steps.
    monkeypatch.setitem(env_mod.MAX_EPISODE_STEPS, "umaze", 40)
    data = gen.generate("umaze", 5000, seed=3)
    starts = list(data["episode_starts"])
    assert starts[0] == 0
    lengths = np.diff(starts + [5000])
    assert lengths.max() <= 41 and (lengths == 41).sum() > 5
    for s, n in zip(starts, lengths):
        goals = data["goals"][s:s + n]
        assert (goals == goals[0]).all()
        if s + n < 5000 and n < 41:  # ended by reaching the target's cell
            assert np.linalg.norm(data["observations"][s + n - 1, :2] - np.round(goals[0])) < gen.SOLVE_THRESH


def test_cli_datagen_maze2d(tmp_path, capsys):
    out = tmp_path / "m.npz"
    cli.main(["datagen", "maze2d", "--maze", "medium", "--steps", "3000", "--seed", "5", "--out", str(out)])
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["generator"] == "maze2d" and manifest["maze"] == "medium" and manifest["seed"] == 5
    assert manifest["steps"] == 3000 and len(manifest["sha256"]) == 64 and manifest["generation_seconds"] > 0
    np.testing.assert_array_equal(np.load(out)["observations"], gen.generate("medium", 3000, 5)["observations"])


def test_datagen_speed():
    start = time.perf_counter()
    gen.generate("large", 20000, seed=0)
    print(f"maze2d datagen: {20000 / (time.perf_counter() - start):,.0f} steps/s")


def test_each_shipped_config_bounds_goals_to_its_maze_and_accepts_every_eval_goal():
    from df_train.cli import check_maze_goals
    from df_train.node_config import load_node_config
    from df_train.envs.maze2d import MAZES, free_bounds

    root = Path(__file__).resolve().parents[2]
    for maze in MAZES:
        for config in root.glob(f"config/maze2d_{maze}*.yaml"):
            assert load_node_config(config)["serve"]["goal_bounds"] == free_bounds(maze), config
            for multi_goal in (False, True):
                check_maze_goals(str(config), maze, multi_goal)


def test_each_shipped_config_keeps_goals_out_of_its_maze_s_walls():
    from df_train.envs.maze2d import MAZES, cell_to_xy, empty_cells, in_free_space, wall_blocks
    from df_train.node_config import load_node_config

    root = Path(__file__).resolve().parents[2]
    for maze in MAZES:
        boxes = wall_blocks(maze)
        # Every box is wall: its centre and corners (just inside) are not free space.
        for (x0, y0), (x1, y1) in boxes:
            inside = [((x0 + x1) / 2, (y0 + y1) / 2), (x0 + 0.01, y0 + 0.01), (x1 - 0.01, y1 - 0.01)]
            assert not any(in_free_space(maze, p) for p in inside), (maze, (x0, y0), (x1, y1))
        # No open cell's centre (where goals are drawn) lies in a box.
        for cell in empty_cells(maze):
            x, y = cell_to_xy(cell)
            assert not any(x0 < x < x1 and y0 < y < y1 for (x0, y0), (x1, y1) in boxes), (maze, cell)
        for config in root.glob(f"config/maze2d_{maze}*.yaml"):
            assert load_node_config(config)["serve"]["goal_keepout"] == boxes, config


def test_d4rls_expert_reference_run_again_scores_about_100_and_a_fresh_expert_more():
    """D4RL's REF_MAX came from one waypoint controller kept across episodes (after the first
    episode, aimed straight at the goal); run that way on the rebuilt task it lands near 100,
    the random policy near 0, and an expert planning each episode afresh well above 100."""
    from df_train.eval.reference import scores

    shared = statistics.fmean(scores("umaze", 40, 0, "shared"))
    fresh = statistics.fmean(scores("umaze", 40, 0, "fresh"))
    random = statistics.fmean(scores("umaze", 40, 0, "random"))
    assert 70 < shared < 130 and fresh > 130 and -20 < random < 20, (shared, fresh, random)
