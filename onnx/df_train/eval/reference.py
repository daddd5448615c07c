"""What D4RL's normalized score of 100 is, on the rebuilt tasks: its expert reference run again.

D4RL's `scripts/reference_scores/maze2d_controller.py` made REF_MAX_SCORE from one waypoint
controller kept across 100 episodes. The controller plans its waypoints only when the target
changes, and maze2d-*-v1 has one fixed goal: once the first episode has reached it, the
controller's waypoint stays at the goal cell, so every later episode is a PD controller (P 10,
D −1) aimed straight at the goal, pressing at walls on the way. `shared` repeats that (it
should give about 100, which checks the rebuilt tasks against D4RL's); `fresh` gives each
episode its own controller, the waypoint expert the datasets come from (the score a planner
that routed as well as it would reach); `random` draws uniform actions (REF_MIN's policy,
about 0).

    python -m df_train.eval.reference --maze medium --episodes 100 --seed 0
"""

import argparse
import statistics

import numpy as np

from ..datagen.maze2d import WaypointController
from ..envs.maze2d import MAZES, Maze2DEnv, normalized_score


def scores(maze: str, episodes: int, seed: int, policy: str) -> list[float]:
    """Normalized scores of `episodes` episodes of `policy` (shared, fresh or random) from
    random starts, env seed `seed`."""
    env = Maze2DEnv(maze, seed=seed)
    actions = np.random.default_rng(seed + 1)
    controller = WaypointController(maze, env.rng)
    out = []
    for _ in range(episodes):
        if policy == "fresh":
            controller = WaypointController(maze, env.rng)
        obs, total = env.reset(), 0.0
        for _ in range(env.max_episode_steps):
            if policy == "random":
                action = actions.uniform(-1.0, 1.0, 2)
            else:
                action, _ = controller(obs, env.goal)
            obs, reward, _ = env.step(action)
            total += reward
        out.append(normalized_score(maze, total))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--maze", choices=MAZES, required=True)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for policy in ("shared", "fresh", "random"):
        s = scores(a.maze, a.episodes, a.seed, policy)
        sem = statistics.stdev(s) / len(s) ** 0.5 if len(s) > 1 else float("nan")
        print(f"{a.maze} {policy}: {statistics.fmean(s):.1f} ± {sem:.1f} (standard error), {len(s)} episodes, seed {a.seed}")


if __name__ == "__main__":
    main()
