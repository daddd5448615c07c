"""`df-train eval maze2d`: D4RL Maze2D episodes (MuJoCo, in Python) driven by the Rust planner
(`df_planner serve`, a JSON line protocol on stdin/stdout), with the ablations of the paper's
Table 1 run side by side, normalized as D4RL does.
"""

import json
import math
import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .planner_process import Planner, PlannerError
from ..node_config import load_node_config
from ..envs.maze2d import (MAX_EPISODE_STEPS, Maze2DEnv, in_free_space, normalized_score, route_length, wall_depth,
                           wall_grid, CELL_SHIFT)

# Chen et al. 2024, Table 1 (normalized score, mean ± std): for the README's comparison. The
# paper's "Diffuser*" row (Diffuser planning, PD controller executing) is set beside our
# pd_controller ablation; the multi-goal row has no spread in the paper.
PAPER = {
    "umaze": {"df_mcg": (116.7, 2.0), "no_mcg": (110.1, 3.9), "pd_controller": (113.9, 3.1), "multi_goal_df": (119.1, None)},
    "medium": {"df_mcg": (149.4, 7.5), "no_mcg": (136.1, 10.2), "pd_controller": (121.5, 2.7), "multi_goal_df": (152.3, None)},
    "large": {"df_mcg": (159.0, 2.7), "no_mcg": (142.8, 5.6), "pd_controller": (123.0, 6.4), "multi_goal_df": (167.1, None)},
}

# Each configuration is the config file plus these `df_planner serve` overrides.
ABLATIONS = {
    "df_mcg": [],
    "no_mcg": ["--samples", "1"],
    "mcg_redraws": ["--mcg", "redraws"],
    "no_guidance": ["--guidance-scale", "0"],
    "full_sequence": ["--matrix", "full_sequence"],
    "warm_start": ["--warm-start-level", "5"],
    "pd_controller": ["--execute", "pd_controller"],
    "no_hold": ["--hold-radius", "none"],
    # df_mcg executed by the robot node's own loop (planner task, control tick with its safety
    # filter, on a virtual clock) instead of serve's: what the node itself would score.
    "node_loop": ["--node-loop"],
    # A probe of why MCG does not help here (docs/maze2d.md): only the executed tokens are
    # guided, so each sample's far tokens are the model's own, unguided future.
    "mcg_prior": ["--mcg", "prior_futures"],
    "no_mcg_prior": ["--mcg", "prior_futures", "--samples", "1"],
    # No planner: serve's PD controller aimed straight at the goal (StraightToGoal).
    "straight_to_goal": None,
}
# What an eval runs unless --configs names others: all but the probe and the node's loop
# (checks of the node, not ablations).
DEFAULT_CONFIGS = [name for name in ABLATIONS
                   if name not in ("mcg_prior", "no_mcg_prior") and not name.startswith("node_loop")]
# df_mcg (or no_mcg) through the node's loop with each plan taking T ms of the simulator's clock,
# as the live planner thread would run beside the point mass in real time on a machine where a
# plan takes that long: node_loop_100ms (about MCG's on 2 CPU cores), node_loop_no_mcg_40ms.
NODE_LOOP_TIMED = re.compile(r"node_loop(_no_mcg)?_(\d+)ms")
# The same with each plan's time drawn from measured plan latencies (--plan-times: the JSON line
# `df_planner bench --config C` prints), seeded by the episode's planner seed: the spread and the
# tail of the live thread's plan times, not one figure.
NODE_LOOP_MEASURED = re.compile(r"node_loop(_no_mcg)?_measured")


def serve_args(name: str, plan_times: str | None = None) -> list[str] | None:
    """The `df_planner serve` overrides of configuration `name` (None: no planner), or a
    ValueError naming the configurations there are; `plan_times`: the bench report the
    *_measured configurations draw plan times from."""
    if name in ABLATIONS:
        return ABLATIONS[name]
    timed = NODE_LOOP_TIMED.fullmatch(name)
    if timed:
        return (["--samples", "1"] if timed[1] else []) + ["--node-loop", "--plan-time-ms", timed[2]]
    measured = NODE_LOOP_MEASURED.fullmatch(name)
    if measured:
        if plan_times is None:
            raise ValueError(f"--configs {name}: needs --plan-times FILE (the JSON line "
                             f"`df_planner bench --config C` prints, saved to FILE)")
        return (["--samples", "1"] if measured[1] else []) + ["--node-loop", "--plan-times", str(plan_times)]
    raise ValueError(f"--configs: unknown {name!r}, expected one of {list(ABLATIONS)} or "
                     f"node_loop_<T>ms / node_loop_no_mcg_<T>ms (plans taking T ms of the simulator's clock) or "
                     f"node_loop_measured / node_loop_no_mcg_measured (plan times drawn from --plan-times)")


class StraightToGoal:
    """The `straight_to_goal` baseline, answering as `df_planner serve` does but with no model:
    serve's PD controller (the config's gains) aimed straight at the goal, at rest. It ignores
    the walls: it reaches the goal only where pulling straight at it (sliding along a wall at
    most) gets there. The floor a planner must beat to show that it plans around walls."""

    def __init__(self, config: str):
        serve = load_node_config(config).get("serve") or {}
        self.kp, self.kd = serve.get("kp", 10.0), serve.get("kd", 4.0)
        self.goal = None

    def ask(self, request: dict) -> dict:
        if request["op"] == "reset":
            self.goal = np.asarray(request["goal"], dtype=np.float64)
            return {"ok": True}
        if request["op"] == "step":
            obs = np.asarray(request["obs"], dtype=np.float64)
            action = np.clip(self.kp * (self.goal - obs[:2]) - self.kd * obs[2:4], -1.0, 1.0)
            return {"ok": True, "action": action.tolist(), "replanned": False}
        if request["op"] == "stats":
            return {"ok": True, "plans": 0, "replan_ms_p50": None, "replan_ms_p99": None, "replan_ms_max": None}
        raise ValueError(f"straight_to_goal: unknown op {request['op']!r}")

    def close(self) -> None:
        pass


# The node's per-episode counters (its diagnostics in `stats` of the node loop, among them the
# planner steps skipped too far behind or recorded without planning, too late to plan from)
# that a run sums over its episodes.
NODE_COUNTERS = ("ticks", "hold", "stop", "clipped", "rate_limited", "late_actions_dropped", "goal_held",
                 "plan_errors", "steps_skipped", "steps_recorded_late")


class NodeLoop(Planner):
    """`df_planner serve --node-loop`: the robot node's own loop (planner task, control tick
    with its PD execution, safety filter and fallbacks, on a virtual clock; src/bridge.rs) in
    place of serve's planner loop, spoken to in serve's terms. The observation [x, y, vx, vy]
    goes in as the robot state's positions and velocities; the goal as a goal message. The
    node's counters (ticks that fell back, rate-limited or clipped actions) are summed over
    the episodes and come back with the stats."""

    NODE_LOOP = "--node-loop"

    def __init__(self, binary: str, config: str, args: list[str]):
        super().__init__(binary, config, args)
        self.counters = dict.fromkeys(NODE_COUNTERS, 0)
        self.stepped = False

    def ask(self, request: dict) -> dict:
        op = request["op"]
        if op == "step":
            obs = request["obs"]
            half = len(obs) // 2
            self.stepped = True
            return super().ask({"op": "step", "state": obs[:half], "velocity": obs[half:]})
        if op == "stats":
            stats = super().ask(request)
            self._count(stats)
            return {**stats, "node_loop": dict(self.counters)}
        if op == "reset" and self.stepped:
            # The node's counters start over with each episode: take the last one's first.
            self._count(super().ask({"op": "stats"}))
        return super().ask(request)

    def _count(self, stats: dict) -> None:
        """Add the current episode's counters, once."""
        if self.stepped:
            for key in NODE_COUNTERS:
                self.counters[key] += stats["diagnostics"][key]
            self.stepped = False


def open_planner(binary: str, config: str, args: list[str] | None) -> Planner | StraightToGoal:
    """What runs a configuration's episodes: serve with its `args`, the node's loop where they
    say `--node-loop`, or the baseline (None)."""
    if args is None:
        return StraightToGoal(config)
    return (NodeLoop if NodeLoop.NODE_LOOP in args else Planner)(binary, config, args)


def run_episode(planner: Planner | StraightToGoal, env: Maze2DEnv, planner_seed: int, record: bool = False) -> dict:
    obs = env.reset()
    if not in_free_space(env.maze, env.goal):
        raise ValueError(f"goal {env.goal.tolist()} is outside the free space of maze {env.maze}")
    planner.ask({"op": "reset", "goal": env.goal.tolist(), "seed": planner_seed})
    total, first_reach, trajectory, plans, mcg = 0.0, None, [obs[:2].tolist()], [], []
    wall_depths = []  # per plan, its deepest position inside a wall
    wall_shares = []  # per plan, the share of its positions inside a wall
    for t in range(env.max_episode_steps):
        reply = planner.ask({"op": "step", "obs": obs.tolist()})
        if reply["replanned"]:
            depths = wall_depth(env.maze, np.asarray(reply["plan"]))
            wall_depths.append(float(depths.max()))
            wall_shares.append(float(np.mean(depths > 0)))
            if record:
                plans.append((t, reply["plan"], reply.get("futures", [])))
        if "mcg_shift" in reply:
            if "mcg_guidance" not in reply:
                raise PlannerError("the planner reports mcg_shift without mcg_guidance: it predates this eval; "
                                   "rebuild it (cargo build --release)")
            apart = futures_apart(reply["plan"], reply["futures"]) if "futures" in reply else None
            mcg.append(McgRow(reply["mcg_shift"], reply["mcg_pull"], apart, reply["mcg_guidance"]))
        obs, reward, _ = env.step(np.asarray(reply["action"]))
        total += reward
        if reward > 0 and first_reach is None:
            first_reach = t + 1
        if record:
            trajectory.append(obs[:2].tolist())
    return {"total_reward": total, "normalized_score": normalized_score(env.maze, total), "first_reach": first_reach,
            "goal": env.goal.tolist(), "trajectory": trajectory, "plans": plans, "mcg": mcg,
            "plan_wall_depths": wall_depths, "plan_wall_shares": wall_shares}


def evaluate_config(maze, episodes, binary, config, args, seed, multi_goal, workers, record,
                    planner_seed_offset=0) -> tuple[dict, list]:
    """Episodes split over `workers` planner processes; episode i uses env seed `seed + i` and
    planner seed `seed + i + planner_seed_offset`, so its result does not depend on the split.
    The first worker to fail stops the others at their next episode: the run is lost anyway."""
    failed = threading.Event()

    def worker(w: int):
        planner = open_planner(binary, config, args)
        try:
            done = []
            for i in range(w, episodes, workers):
                if failed.is_set():
                    return done, None
                env = Maze2DEnv(maze, seed=seed + i, multi_goal=multi_goal)
                done.append((i, run_episode(planner, env, seed + i + planner_seed_offset, record=record and i < 4)))
            stats = planner.ask({"op": "stats"})
        except BaseException:
            failed.set()
            raise
        finally:
            planner.close()
        return done, stats

    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(worker, range(workers)))
    results = sorted((e for done, _ in parts for e in done), key=lambda e: e[0])
    scores = [r["normalized_score"] for _, r in results]
    reaches = [r["first_reach"] for _, r in results if r["first_reach"] is not None]
    mcg = [v for _, r in results for v in r["mcg"]]
    wall_depths = np.array([d for _, r in results for d in r["plan_wall_depths"]])
    wall_shares = [s for _, r in results for s in r["plan_wall_shares"]]
    stats = [s for _, s in parts]
    summary = {
        "maze": maze,
        "multi_goal": multi_goal,
        **score_summary(scores),
        "success_rate": len(reaches) / len(scores),
        "time_to_first_reach_mean": statistics.fmean(reaches) if reaches else None,
        "time_to_first_reach_censored_mean": censored_reach(maze, len(scores), reaches),
        "reached": [r["first_reach"] is not None for _, r in results],
        # Over every worker's plans, pooled from the processes' latency buckets.
        **pooled_replan_ms(stats),
        "plans": sum(s["plans"] for s in stats),
        # Through the node's own loop: its counters summed over the episodes (ticks that fell
        # back to hold or stop, actions the safety filter clipped or rate-limited, plan actions
        # already past when their plan landed, ticks that held the goal, planner steps
        # skipped); None through serve.
        "node_loop": pooled_node_loop(stats),
        # How much averaging over the sampled futures changed the executed tokens' guidance
        # (serve's mcg_shift s), how strong it left it (mcg_pull p), the part of it along
        # plain guidance's direction ((p² + 1 − s²) / 2 of plain guidance's length), and how
        # far the futures strayed from the plan (futures_apart): means over plans, the same
        # weighted by ‖g₀‖² (ratios of sums over the run's rows), and the pull by how far the
        # futures strayed; None without MCG.
        **mcg_means(mcg),
        **mcg_weighted(mcg),
        "mcg_by_futures_apart": mcg_by_futures_apart(mcg),
        # Plans with a planned position inside a wall: how far the model's prior keeps guided
        # plans to the corridors; and those reaching deeper than each of WALL_DEPTHS, which
        # tell grazing a wall from crossing one. None for a baseline.
        "plans_through_walls_rate": float(np.mean(wall_depths > 0)) if wall_depths.size else None,
        "plans_wall_depth_over": ({str(d): float(np.mean(wall_depths > d)) for d in WALL_DEPTHS}
                                  if wall_depths.size else None),
        # The mean share of a plan's positions inside a wall: where nearly every long plan
        # touches a wall somewhere, how much of it does (a prior learning the walls lowers it).
        "plan_positions_in_walls_mean": statistics.fmean(wall_shares) if wall_shares else None,
        "env_seeds": [seed, seed + episodes - 1],
        "planner_seeds": [seed + planner_seed_offset, seed + planner_seed_offset + episodes - 1],
        "serve_args": args,
        "config": config,
        "model_sha256": model_identity(config),
    }
    return summary, [r for _, r in results if r["plans"]]


def model_identity(config) -> str | None:
    """The first 16 hex digits of the sha256 of the config's model file (its path resolved as
    df_planner does: relative to the config folder's parent), so that results can tell which
    model they measured; None for a config without a readable one."""
    import hashlib

    try:
        model = Path((load_node_config(config).get("model") or {})["path"])
        if not model.is_absolute():
            model = Path(config).parent.parent / model
        return hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    except (OSError, KeyError, TypeError, AttributeError, ValueError):
        return None


def plot(maze: str, recorded: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(recorded), figsize=(4 * len(recorded), 4), squeeze=False)
    walls = wall_grid(maze)
    for ax, ep in zip(axes[0], recorded):
        for (i, j), wall in np.ndenumerate(walls):
            if wall:
                ax.add_patch(plt.Rectangle((i - 0.5 - CELL_SHIFT, j - 0.5 - CELL_SHIFT), 1, 1, color="0.3"))
        for k, (t, plan, futures) in enumerate(ep["plans"][:: max(1, len(ep["plans"]) // 6)]):
            p = np.asarray(plan)
            ax.plot(p[:, 0], p[:, 1], "-", color=plt.cm.viridis(k / 6), lw=1, alpha=0.8, label="plan" if k == 0 else None)
            # MCG's other futures, whose guidance the plan's executed token averaged.
            for b, future in enumerate(futures):
                f = np.asarray(future)
                ax.plot(f[:, 0], f[:, 1], ":", color=plt.cm.viridis(k / 6), lw=0.8, alpha=0.6,
                        label="MCG's other futures" if k == 0 and b == 0 else None)
        tr = np.asarray(ep["trajectory"])
        ax.plot(tr[:, 0], tr[:, 1], "r-", lw=2, label="executed")
        ax.plot(*tr[0], "ko", label="start")
        ax.plot(*ep["goal"], "g*", ms=15, label="goal")
        ax.set_aspect("equal")
        ax.set_xlim(-0.7 - CELL_SHIFT, walls.shape[0] - 0.3 - CELL_SHIFT)
        ax.set_ylim(-0.7 - CELL_SHIFT, walls.shape[1] - 0.3 - CELL_SHIFT)
        ax.set_title(f"score {ep['normalized_score']:.0f}, first reach {ep['first_reach']}")
    axes[0][0].legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def score_summary(scores: list[float]) -> dict:
    """The std is the episodes' own spread (population, ddof 0); the standard error of the
    mean, like the paired differences', uses the sample std (ddof 1)."""
    return {
        "episodes": len(scores),
        "normalized_score_mean": statistics.fmean(scores),
        "normalized_score_std": statistics.pstdev(scores),
        "normalized_score_sem": standard_error(scores),
        "scores": scores,
    }


def standard_error(values: list[float]) -> float:
    """Of the mean: the sample std (ddof 1) / √n; NaN for fewer than two values."""
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")


def fill_paired_differences(results: dict) -> None:
    """df_mcg − each other configuration, whichever order the configurations ran in; and each
    configuration against the straight_to_goal baseline: the paired difference, and in how
    many episodes one reached the goal and the other did not (does the planner route around
    walls?)."""
    if "df_mcg" in results:
        for other, r in results.items():
            if other != "df_mcg":
                r["df_mcg_minus_this"] = paired_difference(results["df_mcg"]["scores"], r["scores"])
    straight = results.get("straight_to_goal")
    if straight is None or "reached" not in straight:
        return
    for name, r in results.items():
        if name != "straight_to_goal" and "reached" in r:
            this_only, straight_only = reached_apart(r["reached"], straight["reached"])
            r["against_straight_to_goal"] = {
                "this_minus_straight": paired_difference(r["scores"], straight["scores"]),
                "reached_where_straight_did_not": this_only,
                "straight_reached_where_this_did_not": straight_only,
            }


def reached_apart(reached_a: list[bool], reached_b: list[bool]) -> tuple[int, int]:
    """Over the same episodes: in how many A reached the goal and B did not, and the reverse."""
    pairs = list(zip(reached_a, reached_b, strict=True))
    return sum(a and not b for a, b in pairs), sum(b and not a for a, b in pairs)


def planner_seed_offset(summary: dict) -> int:
    """A run's --planner-seed-offset: runs with different ones planned the same starts under other noise."""
    return summary["planner_seeds"][0] - summary["env_seeds"][0]


def paired_difference(reference: list[float], other: list[float]) -> dict:
    """reference − other over the same episodes (episode i has env seed seed + i in every
    configuration), so the start and goal spread cancels: mean, its standard error, and t."""
    diffs = [a - b for a, b in zip(reference, other, strict=True)]
    mean = statistics.fmean(diffs)
    sem = standard_error(diffs)
    return {"mean": mean, "sem": sem, "t": mean / sem if sem > 0 else float("nan")}


# Bands of the start's route length to the goal (cells), for where in the maze two runs differ.
ROUTE_BANDS = ((0, 3), (4, 7), (8, 11), (12, 15), (16, None))


def start_route_lengths(maze: str, multi_goal: bool, first: int, last: int) -> list[int]:
    """Per env seed first..last, the route length from the episode's start to its goal (the
    episode's own environment reset again: the same draw as when it ran)."""
    lengths = []
    for seed in range(first, last + 1):
        env = Maze2DEnv(maze, seed=seed, multi_goal=multi_goal)
        lengths.append(route_length(maze, env.reset()[:2], env.goal))
    return lengths


def pair(spec_a: str, spec_b: str) -> dict:
    """A − B by seed between two runs written apart (`RESULTS[:CONFIG]`; CONFIG may be left
    out where the file holds one), such as a configuration run later on some of another run's
    seeds: over the env seeds both ran, which must have had the same planner seeds, maze and
    goal mode. The models may differ: comparing them is what it is for."""
    (path_a, name_a, a), (path_b, name_b, b) = (_one_config(spec) for spec in (spec_a, spec_b))
    for field in ("maze", "multi_goal"):
        if a[field] != b[field]:
            raise ValueError(f"{field} is {a[field]!r} in {path_a} but {b[field]!r} in {path_b}: not the same episodes")
    first, last = max(a["env_seeds"][0], b["env_seeds"][0]), min(a["env_seeds"][1], b["env_seeds"][1])
    if first > last:
        raise ValueError(f"env seeds {a['env_seeds']} ({path_a}) and {b['env_seeds']} ({path_b}) do not overlap")
    offsets = {path: planner_seed_offset(run) for path, run in ((path_a, a), (path_b, b))}
    if len(set(offsets.values())) > 1:
        raise ValueError(f"planner seed offsets {offsets} differ (--planner-seed-offset): the same starts under "
                         f"other planner noise are not paired")

    def overlap(run: dict, key: str) -> list:
        start = first - run["env_seeds"][0]
        return run[key][start:start + last - first + 1]

    scores_a, scores_b = overlap(a, "scores"), overlap(b, "scores")
    diffs = [x - y for x, y in zip(scores_a, scores_b, strict=True)]
    paired = {"a": f"{path_a}:{name_a}", "b": f"{path_b}:{name_b}", "env_seeds": [first, last],
              "episodes": len(diffs), "a_mean": statistics.fmean(scores_a), "b_mean": statistics.fmean(scores_b),
              "a_minus_b": paired_difference(scores_a, scores_b),
              "a_wins": sum(d > 0 for d in diffs), "b_wins": sum(d < 0 for d in diffs)}
    if "reached" in a and "reached" in b:
        paired["a_reached_where_b_did_not"], paired["b_reached_where_a_did_not"] = reached_apart(
            overlap(a, "reached"), overlap(b, "reached"))
    routes = start_route_lengths(a["maze"], a["multi_goal"], first, last)
    paired["by_route_length"] = []
    for low, high in ROUTE_BANDS:
        band = [i for i, cells in enumerate(routes) if low <= cells and (high is None or cells <= high)]
        if band:
            band_a, band_b = [scores_a[i] for i in band], [scores_b[i] for i in band]
            paired["by_route_length"].append({"cells": [low, high], "episodes": len(band),
                                              "a_mean": statistics.fmean(band_a), "b_mean": statistics.fmean(band_b),
                                              "a_minus_b": paired_difference(band_a, band_b)})
    return paired


def _one_config(spec: str) -> tuple[str, str, dict]:
    path, _, name = str(spec).partition(":")
    results = read_results(path)
    if not name:
        if len(results) != 1:
            raise ValueError(f"{path} holds {list(results)}: name one as {path}:CONFIG")
        name = next(iter(results))
    if name not in results:
        raise ValueError(f"{path} has no configuration {name!r}, only {list(results)}")
    return path, name, results[name]


def pair_line(paired: dict) -> str:
    d = paired["a_minus_b"]
    line = (f"{paired['a']} − {paired['b']}, env seeds {paired['env_seeds'][0]}–{paired['env_seeds'][1]} "
            f"({paired['episodes']} episodes): {d['mean']:+.1f} ± {d['sem']:.1f} (t {d['t']:.1f}); "
            f"{paired['a_mean']:.1f} against {paired['b_mean']:.1f}; wins {paired['a_wins']} to {paired['b_wins']}")
    if "a_reached_where_b_did_not" in paired:
        line += (f"; reached where the other did not: {paired['a_reached_where_b_did_not']} to "
                 f"{paired['b_reached_where_a_did_not']}")
    bands = []
    for band in paired["by_route_length"]:
        low, high = band["cells"]
        d = band["a_minus_b"]
        spread = f" ± {d['sem']:.1f}" if band["episodes"] > 1 else ""
        bands.append(f"{low}{f'–{high}' if high is not None else '+'} cells: {d['mean']:+.1f}{spread} "
                     f"({band['a_mean']:.1f} against {band['b_mean']:.1f}, {band['episodes']} "
                     f"episode{'s' if band['episodes'] > 1 else ''})")
    return line + "\n  by the start's route length to the goal: " + "; ".join(bands) + "\n"


def censored_reach(maze: str, episodes: int, reaches: list) -> float:
    """The mean first-reach step over every episode, one that never reached counted at the
    episode's length (a lower bound for it). The mean over the reached episodes alone favours a
    configuration that reaches fewer, since the starts it misses are the far ones."""
    return (sum(reaches) + (episodes - len(reaches)) * MAX_EPISODE_STEPS[maze]) / episodes


def table(results: dict) -> str:
    """The README table: each configuration beside the paper's number for it, if any."""
    rows = ["| configuration | normalized score | df_mcg − this (paired) | success | first reach (steps): reached / all | "
            "replan p50 / p99 (ms) | episodes | paper |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        paper = r.get("paper")
        if isinstance(paper, (list, tuple)):
            paper = f"{paper[0]}" + (f" ± {paper[1]}" if paper[1] is not None else "")
        else:
            paper = "—"
        reach = f"{r['time_to_first_reach_mean']:.0f}" if r["time_to_first_reach_mean"] is not None else "—"
        if r.get("time_to_first_reach_censored_mean") is not None:
            reach += f" / {r['time_to_first_reach_censored_mean']:.0f}"
        diff = r.get("df_mcg_minus_this")
        diff = f"{diff['mean']:+.1f} ± {diff['sem']:.1f} (t {diff['t']:.1f})" if diff else "—"
        rows.append(f"| {r['maze']}{' multi-goal' if r['multi_goal'] else ''} {name} | "
                    f"{r['normalized_score_mean']:.1f} ± {r['normalized_score_std']:.1f} | {diff} | "
                    f"{r['success_rate']:.2f} | {reach} | "
                    f"{_ms(r['replan_ms_p50'])} / {_ms(r['replan_ms_p99'])} | {r['episodes']} | {paper} |")
    return "\n".join(rows) + "\n"


def evaluate(maze, episodes, binary, config, out, configs=None, seed=0, multi_goal=False, workers=1,
             planner_seed_offset=0, plan_times=None) -> dict:
    results = {}
    configs = configs or DEFAULT_CONFIGS
    for name in configs:
        start = time.perf_counter()
        summary, recorded = evaluate_config(maze, episodes, binary, config, serve_args(name, plan_times), seed,
                                            multi_goal, workers,
                                            record=(name == configs[0]), planner_seed_offset=planner_seed_offset)
        summary["wall_s"] = time.perf_counter() - start
        # The paper reports multi-goal for DF with MCG only.
        paper_key = ("multi_goal_df" if name == "df_mcg" else None) if multi_goal else name
        summary["paper"] = PAPER[maze].get(paper_key)
        results[name] = summary
        fill_paired_differences(results)
        print(f"{maze} {name}: {summary['normalized_score_mean']:.1f} ± {summary['normalized_score_std']:.1f} "
              f"(success {summary['success_rate']:.2f}, replan p50 {_ms(summary['replan_ms_p50'])} ms, "
              f"{summary['wall_s']:.0f} s)", flush=True)
        write_results(results, out)  # makes the output folder the plot goes into
        if recorded:
            plot(maze, recorded, Path(out).with_suffix(".png"))
    return results


def write_results(results: dict, out) -> None:
    """results.json and the README table beside it (.md)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=2) + "\n")
    Path(out).with_suffix(".md").write_text(table(results))


# What merge reads from each configuration of each results.json.
MERGED_FIELDS = ("maze", "multi_goal", "episodes", "scores", "success_rate", "time_to_first_reach_mean",
                 "replan_ms_p50", "replan_ms_p99", "replan_ms_max", "plans", "env_seeds", "planner_seeds",
                 "serve_args", "config", "paper", "wall_s")


def read_results(path) -> dict:
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a results.json ({e})") from None
    if not isinstance(results, dict) or not all(isinstance(s, dict) for s in results.values()):
        raise ValueError(f"{path}: not a results.json of df-train eval maze2d (expected an object of configurations)")
    for name, summary in results.items():
        missing = [f for f in MERGED_FIELDS if f not in summary]
        if missing:
            raise ValueError(f"{path}: {name} has no {missing}: not a results.json of df-train eval maze2d")
    return results


def merge(paths: list, out) -> dict:
    """Pool runs of one evaluation over adjacent env seed ranges (`--seed 0 --episodes 100`,
    `--seed 100 --episodes 200`, ...) into one results file, as if it had run in one go: the
    per-episode scores are concatenated in seed order and every statistic over episodes,
    paired differences included, is recomputed. Replan percentiles cannot be pooled from
    percentiles: they are pooled from the runs' latency buckets, or where a run has none
    (written before they were reported) the worst run's are kept."""
    runs = [(str(p), read_results(p)) for p in paths]
    first_path, first = runs[0]
    results = {}
    for path, run in runs[1:]:
        # Paired by name: the order the configurations were run in does not matter.
        if sorted(run) != sorted(first):
            raise ValueError(f"{path}: configurations {list(run)}, expected {list(first)} as in {first_path}")
    for name in first:
        parts = sorted(((path, run[name]) for path, run in runs), key=lambda part: part[1]["env_seeds"][0])
        for path, part in parts:
            for field in ("maze", "multi_goal", "config", "serve_args"):
                if part[field] != first[name][field]:
                    raise ValueError(f"{path}: {name}.{field} is {part[field]!r}, expected {first[name][field]!r} "
                                     f"as in {first_path}: only runs of the same evaluation can be pooled")
        # A run written before results named their model (no model_sha256) is not checked.
        models = {part["model_sha256"]: path for path, part in parts if part.get("model_sha256") is not None}
        if len(models) > 1:
            raise ValueError(f"{name}: model_sha256 differs between {sorted(models.values())}: "
                             f"only runs of the same model can be pooled")
        offsets = {planner_seed_offset(part) for _, part in parts}
        if len(offsets) > 1:
            raise ValueError(f"{name}: planner seed offsets {sorted(offsets)} differ between runs "
                             f"(--planner-seed-offset); only runs with the same one can be pooled")
        for (path_a, a), (path_b, b) in zip(parts, parts[1:]):
            if b["env_seeds"][0] != a["env_seeds"][1] + 1:
                raise ValueError(f"{name}: env seeds {a['env_seeds']} ({path_a}) then {b['env_seeds']} ({path_b}); "
                                 f"runs must cover adjacent seed ranges, without overlap or gap")
        summaries = [part for _, part in parts]
        scores = [s for part in summaries for s in part["scores"]]
        reached = [round(part["success_rate"] * part["episodes"]) for part in summaries]
        reach_steps = sum(n * part["time_to_first_reach_mean"] for n, part in zip(reached, summaries) if n)
        maze = first[name]["maze"]
        results[name] = {
            **{k: first[name][k] for k in ("maze", "multi_goal")},
            **score_summary(scores),
            "success_rate": sum(reached) / len(scores),
            "time_to_first_reach_mean": reach_steps / sum(reached) if sum(reached) else None,
            "time_to_first_reach_censored_mean": (reach_steps + (len(scores) - sum(reached)) * MAX_EPISODE_STEPS[maze])
            / len(scores),
            # Per episode, when every run has it (results written before it was added do not).
            **({"reached": [v for part in summaries for v in part["reached"]]}
               if all("reached" in part for part in summaries) else {}),
            **pooled_replan_ms(summaries),
            "plans": sum(part["plans"] for part in summaries),
            "node_loop": pooled_node_loop(summaries),
            **{k: pooled_per_plan(summaries, k) for k in MCG_MEANS},
            **pooled_weighted(summaries),
            "mcg_by_futures_apart": pooled_by_futures_apart(summaries),
            "plans_through_walls_rate": pooled_per_plan(summaries, "plans_through_walls_rate"),
            "plans_wall_depth_over": pooled_wall_depth_over(summaries),
            "plan_positions_in_walls_mean": pooled_per_plan(summaries, "plan_positions_in_walls_mean"),
            "env_seeds": [summaries[0]["env_seeds"][0], summaries[-1]["env_seeds"][1]],
            "planner_seeds": [summaries[0]["planner_seeds"][0], summaries[-1]["planner_seeds"][1]],
            **{k: first[name][k] for k in ("serve_args", "config", "paper")},
            "model_sha256": next(iter(models), None),
            "wall_s": sum(part["wall_s"] for part in summaries),
            "merged_from": [path for path, _ in parts],
        }
    fill_paired_differences(results)
    write_results(results, out)
    return results


def pooled_node_loop(summaries: list) -> dict | None:
    """The node loop's counters summed over runs (or a run's workers); a counter that a run
    lacks (written before it was counted) is None; None through serve."""
    if not all(part.get("node_loop") for part in summaries):
        return None
    return {key: (sum(part["node_loop"][key] for part in summaries)
                  if all(key in part["node_loop"] for part in summaries) else None) for key in NODE_COUNTERS}


REPLAN_PERCENTILES = {"replan_ms_p50": 0.5, "replan_ms_p99": 0.99}


def pooled_replan_ms(parts: list) -> dict:
    """Replan latency over the plans of several parts (a run's worker processes, or merged
    runs): the parts' buckets (`replan_ms_buckets`: upper edge in ms, plans) summed, and the
    percentiles taken by `df_planner serve`'s rule (the edge of the bucket holding the rank,
    capped at the maximum). A part without buckets (written before they were reported) leaves
    the worst part's percentiles, and no buckets. None for a baseline, which never plans."""
    keys = (*REPLAN_PERCENTILES, "replan_ms_max")
    if any(part[k] is None for part in parts for k in keys):
        return dict.fromkeys((*keys, "replan_ms_buckets"))
    if any(part.get("replan_ms_buckets") is None for part in parts):
        return {**{k: max(part[k] for part in parts) for k in keys}, "replan_ms_buckets": None}
    peak = max(part["replan_ms_max"] for part in parts)
    counts = {}
    for part in parts:
        for edge, plans in part["replan_ms_buckets"]:
            counts[edge] = counts.get(edge, 0) + plans
    buckets = sorted(counts.items())
    total = sum(counts.values())

    def quantile(q: float) -> float:
        rank = min(max(math.ceil(q * total), 1), total)
        seen = 0
        for edge, plans in buckets:
            seen += plans
            if seen >= rank:
                return min(edge, peak)
        return 0.0  # no plans, as serve reports it

    return {**{k: quantile(q) for k, q in REPLAN_PERCENTILES.items()}, "replan_ms_max": peak,
            "replan_ms_buckets": [list(b) for b in buckets]}


def _ms(value) -> str:
    return "—" if value is None else f"{value:.1f}"


# Maze units inside a wall (a cell is 1): more than the ball's radius, a quarter cell, and near
# the middle of a wall one cell thick, where it means crossing the wall (in a thicker wall it
# may mean only pushing into it).
WALL_DEPTHS = (0.1, 0.25, 0.4)
MCG_MEANS = ("mcg_shift_mean", "mcg_pull_mean", "mcg_along_mean", "mcg_futures_apart_mean")
# Bins [low, high) of futures_apart (maze units; a cell is 1; None: no upper bound) for
# `mcg_by_futures_apart`.
FUTURES_APART_BINS = ((0.0, 0.5), (0.5, 1.0), (1.0, None))


def futures_apart(plan: list, futures: list) -> float:
    """How far MCG's futures strayed from the plan: the largest distance (maze units) from a
    position of any future to the nearest position of the plan's path. A future that follows
    the plan's path, however fast, stays near 0; one that goes another way round a wall, or
    on past the plan's end, is about a cell or more away."""
    path = np.asarray(plan, dtype=np.float64)
    return max(float(np.linalg.norm(np.asarray(f)[:, None, :] - path[None, :, :], axis=-1).min(1).max())
               for f in futures)


def along(shift: float, pull: float) -> float:
    """The averaged guidance's component along plain guidance's, as a share of its length."""
    return (pull * pull + 1 - shift * shift) / 2


class McgRow(NamedTuple):
    """What serve says of MCG for one plan (the terms are `mcg_weighted`'s)."""
    shift: float
    pull: float
    apart: float | None  # futures_apart; None without futures (redraws)
    guidance: float  # ‖g₀‖, plain guidance's strength


def mcg_means(mcg: list[McgRow]) -> dict:
    """`MCG_MEANS` over plans; None without MCG (the futures' mean: without futures)."""
    if not mcg:
        return dict.fromkeys(MCG_MEANS)
    aparts = [m.apart for m in mcg if m.apart is not None]
    return dict(zip(MCG_MEANS, (statistics.fmean(m.shift for m in mcg), statistics.fmean(m.pull for m in mcg),
                                statistics.fmean(along(m.shift, m.pull) for m in mcg),
                                statistics.fmean(aparts) if aparts else None)))


MCG_WEIGHTED = ("mcg_shift_weighted", "mcg_pull_weighted", "mcg_along_weighted", "mcg_guidance_sumsq")


def mcg_weighted(mcg: list[McgRow]) -> dict:
    """Shift, pull and along over the run as serve computes them over one plan's rows: ratios of
    sums, each plan weighted by its plain guidance's ‖g₀‖² (o = mcg_guidance):
    √(Σ s²o² / Σ o²), √(Σ p²o² / Σ o²), Σ along·o² / Σ o², and Σ o² to pool runs by. A plan that
    the reward barely reaches (a goal far outside a narrow reward) has a ratio of two small
    numbers that a mean over plans counts in full, though it steered little. None without MCG."""
    total = sum(m.guidance ** 2 for m in mcg)
    if not total:
        return dict.fromkeys(MCG_WEIGHTED)
    return dict(zip(MCG_WEIGHTED, (math.sqrt(sum((m.shift * m.guidance) ** 2 for m in mcg) / total),
                                   math.sqrt(sum((m.pull * m.guidance) ** 2 for m in mcg) / total),
                                   sum(along(m.shift, m.pull) * m.guidance ** 2 for m in mcg) / total, total)))


def pooled_weighted(summaries: list) -> dict:
    """`mcg_weighted` over runs, each run as one plan of strength √(Σ o²); None if any run lacks
    it."""
    if any(part.get("mcg_guidance_sumsq") is None for part in summaries):
        return dict.fromkeys(MCG_WEIGHTED)
    return mcg_weighted([McgRow(part["mcg_shift_weighted"], part["mcg_pull_weighted"], None,
                                math.sqrt(part["mcg_guidance_sumsq"])) for part in summaries])


def mcg_by_futures_apart(mcg: list[McgRow]) -> list | None:
    """Per bin of futures_apart (`FUTURES_APART_BINS`): the plans in it and their mean pull and
    part along plain guidance: whether futures that go their own ways average to a weaker or
    turned pull. None without futures."""
    with_futures = [m for m in mcg if m.apart is not None]
    if not with_futures:
        return None
    rows = []
    for low, high in FUTURES_APART_BINS:
        inside = [m for m in with_futures if low <= m.apart and (high is None or m.apart < high)]
        rows.append({"futures_apart": [low, high], "plans": len(inside),
                     "mcg_pull_mean": statistics.fmean(m.pull for m in inside) if inside else None,
                     "mcg_along_mean": statistics.fmean(along(m.shift, m.pull) for m in inside) if inside else None})
    return rows


def pooled_by_futures_apart(summaries: list) -> list | None:
    """`mcg_by_futures_apart` over runs, each bin's means weighted by its plans; None if any
    run lacks it."""
    parts = [part.get("mcg_by_futures_apart") for part in summaries]
    if any(p is None for p in parts):
        return None
    labels = {tuple(tuple(b["futures_apart"]) for b in part) for part in parts}
    if len(labels) > 1:
        raise ValueError(f"mcg_by_futures_apart: the runs bin futures_apart differently ({sorted(labels)}); "
                         f"only runs of the same evaluation can be pooled")
    rows = []
    for bins in zip(*parts):
        filled = [b for b in bins if b["plans"]]
        rows.append({"futures_apart": bins[0]["futures_apart"], "plans": sum(b["plans"] for b in bins),
                     **{key: pooled_per_plan(filled, key) if filled else None
                        for key in ("mcg_pull_mean", "mcg_along_mean")}})
    return rows


def pooled_wall_depth_over(summaries: list) -> dict | None:
    """`plans_wall_depth_over` pooled as `pooled_per_plan` pools a rate; None if any run lacks it."""
    if any(part.get("plans_wall_depth_over") is None for part in summaries):
        return None
    depths = {tuple(part["plans_wall_depth_over"]) for part in summaries}
    if len(depths) > 1:
        raise ValueError(f"plans_wall_depth_over: the runs measure different depths ({sorted(depths)}); "
                         f"only runs of the same evaluation can be pooled")
    return {d: pooled_per_plan([{**part, "rate": part["plans_wall_depth_over"][d]} for part in summaries], "rate")
            for d in summaries[0]["plans_wall_depth_over"]}


def pooled_per_plan(summaries: list, key: str) -> float | None:
    """The plans-weighted mean of the runs' per-plan mean `key`; None if any run lacks it."""
    if any(part.get(key) is None for part in summaries):
        return None
    return sum(part[key] * part["plans"] for part in summaries) / sum(part["plans"] for part in summaries)


def _earlier_results(path: Path, maze, episodes, seed, configs, model_sha256) -> dict | None:
    """A snapshot's results from an earlier curve run, if they are what this run would measure
    (same model, configurations, episodes and seeds; the caller checks the config file), so
    that a curve can be extended while training still writes snapshots."""
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    for name in configs:
        r = results.get(name)
        if (r is None or r["maze"] != maze or r["multi_goal"] or r["episodes"] != episodes
                or r["env_seeds"] != [seed, seed + episodes - 1] or r["serve_args"] != serve_args(name)
                # Results written before they named their model are taken as they are.
                or r.get("model_sha256", model_sha256) != model_sha256):
            return None
    return results


def learning_curve(maze, episodes, binary, config, run_dir, out, seed=0, workers=1, configs=("df_mcg",),
                   every=None) -> list[dict]:
    """Score vs training steps: export every snapshot in run_dir/snapshots and evaluate the
    configurations with it (each snapshot's results.json beside it; a rerun reuses those that
    match). With `every`, only snapshots at multiples of that many steps are evaluated anew;
    those measured before stay on the curve. With df_mcg and no_mcg, each point also has their
    paired difference, to see whether MCG's effect grows with training. Writes out (.json)
    and a .png beside it."""
    import yaml

    from ..export import export

    points = []
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    cfg = load_node_config(config)
    for snap in sorted(Path(run_dir, "snapshots").glob("step*.pt")):
        model = snap.with_suffix(".onnx")
        cfg["model"]["path"] = str(model.resolve())
        snap_config, snap_results = snap.with_suffix(".yaml"), snap.with_suffix(".json")
        text = yaml.safe_dump(cfg, sort_keys=False)
        same_config = snap_config.exists() and snap_config.read_text() == text
        step = int(snap.stem.removeprefix("step"))
        # A snapshot rewritten since its export (a new run in the same folder) is exported
        # again, and results measured on the old export are not reused.
        exported = model.exists() and model.stat().st_mtime >= snap.stat().st_mtime
        results = _earlier_results(snap_results, maze, episodes, seed, configs, model_identity(snap_config)) \
            if same_config and exported else None
        if results is None and every and step % every:
            continue
        snap_config.write_text(text)
        if results is None:
            if not exported:
                export(snap, model)
            print(f"{maze} snapshot at step {step}:", flush=True)
            results = evaluate(maze, episodes, binary, str(snap_config), snap_results, list(configs), seed, False,
                               workers)
        else:
            print(f"{maze} snapshot at step {step}: evaluated before ({snap_results})", flush=True)
        # With how much of a plan lies inside walls: whether the prior learns the layout (None
        # from results written before it was measured).
        point = {"step": step,
                 "configs": {name: {**{k: results[name][k] for k in ("normalized_score_mean", "normalized_score_std",
                                                                     "success_rate", "episodes")},
                                    "plan_positions_in_walls_mean": results[name].get("plan_positions_in_walls_mean")}
                             for name in configs}}
        if "df_mcg" in configs and "no_mcg" in configs:
            point["df_mcg_minus_no_mcg"] = paired_difference(results["df_mcg"]["scores"], results["no_mcg"]["scores"])
        points.append(point)
        Path(out).write_text(json.dumps(points, indent=2) + "\n")
    if points:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        steps = [p["step"] for p in points]
        for name in configs:
            mean = np.array([p["configs"][name]["normalized_score_mean"] for p in points])
            # The population std to the standard error of the mean: std / √(n − 1).
            sem = np.array([p["configs"][name]["normalized_score_std"] / max(p["configs"][name]["episodes"] - 1, 1) ** 0.5
                            for p in points])
            ax.errorbar(steps, mean, yerr=sem, marker="o", capsize=3, label=name)
        ax.axhline(PAPER[maze]["df_mcg"][0], color="g", ls="--", label="paper (DF with MCG)")
        ax.xaxis.set_major_formatter(lambda steps, _: f"{steps / 1000:g}k")
        ax.set_xlabel("training steps")
        ax.set_ylabel("normalized score")
        ax.set_title(f"maze2d-{maze}: {episodes} episodes per point")
        ax.legend()
        fig.tight_layout()
        fig.savefig(Path(out).with_suffix(".png"), dpi=100)
        plt.close(fig)
    return points
