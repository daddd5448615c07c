"""`df-train eval maze2d --action-spread K`: what MCG changes in the actions the robot executes.
From each evaluation start (episode i: env seed seed + i, at rest) every configuration plans
once with planner seeds 0..K-1 and executes its first `replan_every` actions. Reported per
configuration: how much those actions vary with the planner's noise (their standard deviation
across seeds) and how often they sit at the action limit; per pair of configurations: how far
their mean executed actions lie apart, and how far apart they would lie by chance alone (seed
k of one against seed k of the other, the same noise where the batch allows, each difference's
sign flipped at random). MCG can only change an episode through the executed
actions: where its mean action is no further from plain guidance's than chance puts it,
averaging over futures cannot change the outcome, whatever it does to the far tokens."""

import itertools
import json
from pathlib import Path

import numpy as np

from .maze2d import serve_args
from ..node_config import load_node_config
from .planner_process import Planner
from ..envs.maze2d import Maze2DEnv

# An action component this close to the limit of ±1 counts as saturated.
SATURATED = 0.99
# Random sign flips for the chance distance.
FLIPS = 50


def mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over starts and steps of the distance between the seed means of a and b
    [start, seed, step, dim]."""
    return float(np.linalg.norm(a.mean(axis=1) - b.mean(axis=1), axis=-1).mean())


def chance_distance(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> float:
    """`mean_distance` expected if a and b differed by chance only: the per-seed differences
    a - b (seed k against seed k: paired) with random signs, averaged over FLIPS draws."""
    diff = a - b
    total = 0.0
    for _ in range(FLIPS):
        signs = rng.choice([-1.0, 1.0], size=(diff.shape[0], diff.shape[1], 1, 1))
        total += float(np.linalg.norm((signs * diff).mean(axis=1), axis=-1).mean())
    return total / FLIPS


def executed_actions(planner: Planner, obs: list, goal: list, seeds: int, steps: int) -> np.ndarray:
    """The first `steps` actions [seeds, steps, action_dim] of one plan per planner seed."""
    actions = []
    for seed in range(seeds):
        planner.ask({"op": "reset", "goal": goal, "seed": seed})
        actions.append([planner.ask({"op": "step", "obs": obs})["action"] for _ in range(steps)])
    return np.array(actions)


def action_spread(maze, episodes, binary, config, configs, seeds, out, seed=0) -> dict:
    if seeds < 2:
        raise ValueError(f"--action-spread: expected at least 2 planner seeds, got {seeds}")
    if any(serve_args(name) is None for name in configs):
        raise ValueError("--action-spread: straight_to_goal has no planner")
    steps = load_node_config(config)["planner"]["replan_every"]
    starts = []
    for i in range(episodes):
        env = Maze2DEnv(maze, seed=seed + i)
        env.reset()
        starts.append(([float(v) for v in env.observation()], [float(v) for v in env.goal]))
    actions = {}
    for name in configs:
        planner = Planner(binary, config, serve_args(name))
        try:
            actions[name] = np.array([executed_actions(planner, obs, goal, seeds, steps) for obs, goal in starts])
        finally:
            planner.close()
    result = {
        "maze": maze, "episodes": episodes, "env_seeds": [seed, seed + episodes - 1], "planner_seeds": seeds,
        "executed_steps": steps, "config": config,
        "configurations": {name: {
            # [start, seed, step, dim]: the spread across seeds, averaged over the rest.
            "seed_std": float(a.std(axis=1).mean()),
            "mean_action_norm": float(np.linalg.norm(a.mean(axis=1), axis=-1).mean()),
            "saturated_rate": float((np.abs(a) >= SATURATED).mean()),
        } for name, a in actions.items()},
        "mean_action_distance": {f"{x} - {y}": {
            "measured": mean_distance(actions[x], actions[y]),
            "by_chance": chance_distance(actions[x], actions[y], np.random.default_rng(0)),
        } for x, y in itertools.combinations(configs, 2)},
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    # The executed actions themselves [start, seed, step, dim], per configuration.
    np.savez(Path(out).with_suffix(".npz"), **actions)
    for name, r in result["configurations"].items():
        print(f"{maze} {name}: executed actions vary by {r['seed_std']:.3f} across planner seeds "
              f"(|mean action| {r['mean_action_norm']:.3f}, {100 * r['saturated_rate']:.0f} % at the limit)")
    for pair, d in result["mean_action_distance"].items():
        print(f"{maze} mean executed action, {pair}: {d['measured']:.3f} apart ({d['by_chance']:.3f} by chance)")
    return result
