"""`df-train eval maze2d --objective-check H,...`: which path does the planner's own goal
reward prefer, over a plan of H steps: pressing straight at the goal, or the route around the
walls? Both are driven in the simulator from each evaluation start (episode i: env seed
seed + i): `straight_to_goal` (PD straight at the goal) and D4RL's waypoint controller (the
route). `df_planner serve` scores their first H positions with the config's goal reward
(`score_path`). Where the straight line never reaches the goal but the reward still prefers
it, a plan that follows the reward alone stays at the wall, with MCG or without: only the
model's prior, plans that keep to the corridors, can take the ball around."""

import json
from pathlib import Path

import numpy as np

from .maze2d import StraightToGoal
from .planner_process import Planner
from ..datagen.maze2d import WaypointController
from ..envs.maze2d import GOAL_RADIUS, Maze2DEnv


def rollout(env: Maze2DEnv, act, steps: int) -> np.ndarray:
    """Positions [steps, 2] after each step of `act(obs)` from the env's current state."""
    obs, positions = env.observation(), []
    for _ in range(steps):
        obs, _, _ = env.step(act(obs))
        positions.append(obs[:2].copy())
    return np.array(positions)


def objective_check(maze, episodes, binary, config, horizons, out, seed=0) -> dict:
    scorer, straight = Planner(binary, config, []), StraightToGoal(config)
    rows = []
    try:
        for i in range(episodes):
            env = Maze2DEnv(maze, seed=seed + i)
            env.reset()
            start = env.data.qpos.copy(), env.data.qvel.copy()
            scorer.ask({"op": "reset", "goal": env.goal.tolist()})
            straight.ask({"op": "reset", "goal": env.goal.tolist()})
            route = WaypointController(maze, np.random.default_rng(seed + i))
            policies = {"straight": lambda o: straight.ask({"op": "step", "obs": o.tolist()})["action"],
                        "route": lambda o: route(o, env.goal)[0]}
            row = {"env_seed": seed + i}
            for name, act in policies.items():
                env.data.qpos[:], env.data.qvel[:] = start
                env.t = 0
                path = rollout(env, act, max(*horizons, env.max_episode_steps))
                row[f"{name}_reaches"] = bool((np.hypot(*(path - env.goal).T) <= GOAL_RADIUS).any())
                row[f"{name}_reward"] = {h: scorer.ask({"op": "score_path", "positions": path[:h].tolist()})["reward"]
                                         for h in horizons}
            rows.append(row)
    finally:
        scorer.close()
    blocked = [r for r in rows if not r["straight_reaches"]]
    summary = {
        "maze": maze, "episodes": episodes, "env_seeds": [seed, seed + episodes - 1], "config": config,
        "straight_blocked": len(blocked),
        "route_reaches_where_blocked": sum(r["route_reaches"] for r in blocked),
        "prefers_straight_where_blocked": {h: sum(r["straight_reward"][h] > r["route_reward"][h] for r in blocked)
                                           for h in horizons},
        "starts": rows,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(summary, indent=2) + "\n")
    for h in horizons:
        print(f"{maze}, plans of {h} steps: the goal reward prefers pressing straight at the goal over the route in "
              f"{summary['prefers_straight_where_blocked'][h]} of the {len(blocked)} starts from which the straight "
              f"line never reaches it", flush=True)
    return summary
