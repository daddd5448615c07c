"""`df-train`: datagen, train, export, eval, bench."""

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

from .model import PARAMETERIZATIONS
from .schedule import SCHEDULES
from .train import TrainConfig, check_training_source

# The train flags a dataset's manifest (datagen's .json beside the .npz) can give.
MANIFEST_DIMS = ("observation_dim", "action_dim")

# Sizes of D4RL's maze2d-{umaze,medium,large}-v1 datasets.
MAZE2D_STEPS = {"umaze": 1_000_000, "medium": 2_000_000, "large": 4_000_000}


# What each train flag sets (TrainConfig's fields; onnx/df_train/train.py says more).
TRAIN_HELP = {
    "out": "run folder: checkpoint.pt (resumed from after an interruption) and snapshots/",
    "observation_dim": "observation size per frame",
    "action_dim": "action size per frame",
    "data": "an episodes .npz from df-train datagen pointmass / maze2d (or --bags)",
    "bags": "a folder of demonstration bags from df-train datagen fruit-swap: a camera model (or --data)",
    "frame_stack": "frames per token",
    "reward": "true: the token also carries the reward (refused for now: the Rust planner has no reward input)",
    "tokens": "tokens per training window: the model's max_tokens",
    "width": "transformer width",
    "depth": "transformer blocks",
    "heads": "attention heads",
    "parameterization": f"what the network predicts: one of {', '.join(PARAMETERIZATIONS)} (eps is refused: the "
                        "sampler's x0 from it multiplies eps errors by up to 1/sqrt(abar) at the noisiest level)",
    "schedule": f"noise schedule: one of {', '.join(SCHEDULES)}",
    "timesteps": "diffusion timesteps",
    "stabilization_level": "noise level the network is told clean context tokens have",
    "noise_clip": "sampling clamps the predicted noise to this",
    "steps": "optimizer steps in all (a longer --steps continues a finished run)",
    "batch": "windows per step",
    "lr": "AdamW learning rate, constant after warm-up",
    "weight_decay": "AdamW weight decay",
    "warmup": "steps of linear learning-rate warm-up",
    "ema_decay": "decay of the weights' moving average, which is what is exported",
    "min_snr_gamma": "Min-SNR loss weighting's cap",
    "min_snr_floor": "lower bound of the loss weight (1 keeps the noisiest tokens counting)",
    "seed": "seed of the weights, batches and noise",
    "checkpoint_every": "steps between checkpoints",
    "snapshot_every": "keep the EMA weights every this many steps (snapshots/, for learning curves; 0: never)",
    "threads": "torch CPU threads (0: torch's default)",
    "device": "cpu, cuda or cuda:N",
    "continuous": "true: the .npz is one stream (D4RL maze2d), windows may cross episode starts",
}


def _add_train_args(p: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(TrainConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        # The dims can come from the dataset's manifest (cmd_train).
        from_manifest = f.name in MANIFEST_DIMS
        required = f.default is dataclasses.MISSING and not from_manifest
        kind = {"bool": lambda s: s.lower() in ("1", "true", "yes")}.get(f.type if isinstance(f.type, str) else f.type.__name__, None)
        ftype = kind or (f.type if not isinstance(f.type, str) else {"int": int, "float": float, "str": str}[f.type])
        default = ("from the dataset's manifest" if from_manifest else None if required or f.default == "" else
                   "off" if f.default is False else f.default)
        help_text = " ".join(filter(None, [TRAIN_HELP.get(f.name), None if default is None else f"(default: {default})"]))
        p.add_argument(flag, dest=f.name, type=ftype, required=required,
                       default=None if required or from_manifest else f.default, help=help_text)


def cmd_datagen(a) -> None:
    from .data import save_dataset

    if a.task == "fruit-swap":
        from .datagen import fruit_swap

        manifest = fruit_swap.generate(Path(a.out), a.episodes, a.seed, storage=a.storage, distractor=a.distractor)
        print(json.dumps({k: v for k, v in manifest.items() if k != "bags"}, indent=2))
        return
    if a.task == "pointmass":
        from .datagen import pointmass

        arrays = pointmass.generate(a.episodes, a.length, a.seed)
        manifest = {"generator": "pointmass", "episodes": a.episodes, "length": a.length, "seed": a.seed,
                    "observation_dim": pointmass.OBS_DIM, "action_dim": pointmass.ACTION_DIM}
    elif a.task == "maze2d":
        if not a.maze:
            raise SystemExit("datagen maze2d: --maze is required (umaze, medium or large)")
        from .datagen import maze2d
        from .envs.maze2d import ACTION_DIM, OBS_DIM

        steps = a.steps or MAZE2D_STEPS[a.maze]
        start = time.perf_counter()
        arrays = maze2d.generate(a.maze, steps, a.seed)
        seconds = time.perf_counter() - start
        manifest = {"generator": "maze2d", "maze": a.maze, "seed": a.seed, "env": f"maze2d-{a.maze}-v1",
                    "segments": len(arrays["episode_starts"]),
                    "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "generation_seconds": round(seconds, 2),
                    "steps_per_second": round(steps / seconds), "observation_dim": OBS_DIM, "action_dim": ACTION_DIM}
    save_dataset(Path(a.out), arrays, manifest)
    print(Path(a.out).with_suffix(".json").read_text())


def cmd_train(a) -> None:
    from .train import train

    check_training_source(a.data, a.bags)
    missing = [d for d in MANIFEST_DIMS if getattr(a, d) is None]
    if missing:
        # The manifest datagen writes beside an .npz dataset, or into a folder of bags.
        manifest_path = Path(a.data).with_suffix(".json") if a.data else Path(a.bags) / "manifest.json" if a.bags \
            else None
        try:
            manifest = json.loads(manifest_path.read_text()) if manifest_path and manifest_path.is_file() else {}
        except ValueError as e:
            raise SystemExit(f"train: {manifest_path}: not a JSON manifest ({e})") from None
        for d in missing:
            if d not in manifest:
                where = f"the dataset has no manifest {manifest_path} naming it" if manifest_path else \
                    "no --data or --bags dataset's manifest to give it"
                raise SystemExit(f"train: --{d.replace('_', '-')}: not given, and {where}")
            setattr(a, d, int(manifest[d]))
    cfg = TrainConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "extra"})
    path = train(cfg, progress=not a.quiet)
    print(f"checkpoint: {path}")


def cmd_export(a) -> None:
    from .export import export, load_model
    from .golden import write_golden

    report = export(Path(a.checkpoint), Path(a.out))
    if a.golden:
        model, cfg, _ = load_model(Path(a.checkpoint))
        report["golden"] = [str(p) for p in write_golden(model, cfg, Path(a.golden), a.out)]
    print(json.dumps(report, indent=2))


def cmd_eval(a) -> None:
    if a.task == "fruit-swap":
        if a.merge or a.pair:
            raise SystemExit("eval fruit-swap: --merge and --pair read maze2d results only")
        from .eval import fruit_swap

        configs = a.configs.split(",") if a.configs else None
        if a.planner or a.config:
            if not (a.planner and a.config and a.out):
                raise SystemExit("eval fruit-swap: --planner, --config and --out go together (the node's closed loop)")
            check_inputs(a.planner, a.config)
            fruit_swap.evaluate_node(a.planner, a.config, a.episodes, Path(a.out), configs, 10_000 + a.seed,
                                     a.workers)
            return
        if not a.checkpoint:
            raise SystemExit("eval fruit-swap: --planner and --config (the node), or --checkpoint (the PyTorch "
                             "reference policy), are required")
        if a.probe:
            fruit_swap.arrangement_probe(Path(a.checkpoint))
            return
        if not a.out:
            raise SystemExit("eval fruit-swap: --out is required")
        fruit_swap.evaluate(Path(a.checkpoint), a.episodes, Path(a.out), configs, 10_000 + a.seed)
        return
    if a.pair:
        from .eval.maze2d import pair, pair_line

        try:
            print(pair_line(pair(*a.pair)), end="")
        except ValueError as e:
            raise SystemExit(f"eval maze2d --pair: {e}") from None
        return
    if a.merge:
        if not a.out:
            raise SystemExit("eval maze2d --merge: --out is required")
        from .eval.maze2d import merge, table

        try:
            print(table(merge(a.merge, a.out)), end="")
        except ValueError as e:
            raise SystemExit(f"eval maze2d --merge: {e}") from None
        return
    missing = [f"--{name}" for name in ("maze", "planner", "config", "out") if not getattr(a, name)]
    if missing:
        raise SystemExit(f"eval maze2d: missing {', '.join(missing)} (--maze, --planner, --config and --out are all required)")
    check_inputs(a.planner, a.config, a.maze, a.multi_goal)
    from .eval.maze2d import DEFAULT_CONFIGS, NODE_LOOP_MEASURED, evaluate, learning_curve, serve_args

    if a.planner_seed_offset and (a.curve or a.objective_check or a.action_spread is not None):
        raise SystemExit("--planner-seed-offset: only for an evaluation, not with --curve, --objective-check or "
                         "--action-spread")
    configs = a.configs.split(",") if a.configs else None
    try:
        for name in configs or []:
            serve_args(name, a.plan_times)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if a.plan_times:
        if not any(NODE_LOOP_MEASURED.fullmatch(name) for name in configs or []):
            raise SystemExit("--plan-times: only with --configs node_loop_measured or node_loop_no_mcg_measured")
        if a.curve or a.objective_check or a.action_spread is not None:
            raise SystemExit("--plan-times: only for an evaluation, not with --curve, --objective-check or "
                             "--action-spread")
        if not Path(a.plan_times).is_file():
            raise SystemExit(f"--plan-times: {a.plan_times}: no such file (save what `df_planner bench --config C` "
                             "prints to it)")
    if a.objective_check:
        from .eval.objective import objective_check

        horizons = [int(h) for h in a.objective_check.split(",")]
        objective_check(a.maze, a.episodes, a.planner, a.config, horizons, a.out, a.seed)
        return
    if a.action_spread is not None:
        from .eval.action_spread import action_spread

        try:
            action_spread(a.maze, a.episodes, a.planner, a.config, configs or ["df_mcg", "no_mcg", "no_guidance"],
                          a.action_spread, a.out, a.seed)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        return
    if a.curve_every and not a.curve:
        raise SystemExit("--curve-every: only with --curve")
    if a.curve and a.multi_goal:
        raise SystemExit("--curve: the learning curve uses the fixed goal; --multi-goal does not apply")
    if a.curve:
        learning_curve(a.maze, a.episodes, a.planner, a.config, a.curve, a.out, a.seed, a.workers,
                       configs or ["df_mcg"], a.curve_every)
        return
    evaluate(a.maze, a.episodes, a.planner, a.config, a.out, configs or DEFAULT_CONFIGS, a.seed, a.multi_goal,
             a.workers, a.planner_seed_offset, a.plan_times)


def check_inputs(planner: str, config: str, maze: str | None = None, multi_goal: bool = False) -> None:
    """Refuse a planner binary or config that is not there, or one whose goal checks do not fit
    the maze (check_maze_goals), before any episode starts."""
    if not (Path(planner).is_file() and os.access(planner, os.X_OK)):
        raise SystemExit(f"--planner: {planner} is not an executable file (build it: cargo build --release, "
                         "then --planner target/release/df_planner)")
    check_planner_is_fresh(planner)
    if not Path(config).is_file():
        raise SystemExit(f"--config: {config}: no such file (the node configs are in config/)")
    if maze:
        check_maze_goals(config, maze, multi_goal)


def check_planner_is_fresh(planner: str) -> None:
    """Refuse a planner binary built before its crate's sources last changed: `eval` does not build,
    and results from an old binary would be credited to the tree as it is now. Only a binary under
    a crate's own `target/` is checked (one elsewhere has no sources to compare with)."""
    binary = Path(planner).resolve()
    crate = next((d.parent for d in binary.parents if d.name == "target" and (d.parent / "Cargo.toml").is_file()),
                 None)
    if crate is None:
        return
    sources = [crate / "Cargo.toml", crate / "Cargo.lock", *sorted((crate / "src").rglob("*.rs"))]
    built = binary.stat().st_mtime
    newer = [s for s in sources if s.is_file() and s.stat().st_mtime > built]
    if newer:
        changed = max(newer, key=lambda s: s.stat().st_mtime)
        raise SystemExit(f"--planner: {planner} was built before {changed.relative_to(crate)} last changed "
                         f"({len(newer)} source file(s) newer than the binary): rebuild it (cargo build --release) "
                         "so the results are this tree's planner's")


def check_maze_goals(config: str, maze: str, multi_goal: bool) -> None:
    """Refuse a config whose `serve.goal_bounds` reach beyond the maze's open cells (a config for
    another maze), or that would refuse a goal the episodes will set (outside its bounds, or in
    one of its `serve.goal_keepout` boxes). Narrower bounds that hold every goal are fine."""
    from .envs.maze2d import free_bounds, goal_regions
    from .node_config import load_node_config

    node = load_node_config(config)
    if not isinstance(node, dict):
        raise SystemExit(f"--config: {config}: expected a node config (a YAML mapping with model, planner, ...)")
    serve = node.get("serve") or {}
    bounds, keepout, maze_bounds = serve.get("goal_bounds"), serve.get("goal_keepout") or [], free_bounds(maze)
    if bounds is not None and not _box_within(bounds, maze_bounds):
        raise SystemExit(f"--config: {config} has serve.goal_bounds {bounds}, beyond the {maze} maze's open "
                         f"cells {maze_bounds}: a config for another maze? (config/maze2d_{maze}.yaml)")
    goals = "random goals" if multi_goal else "goal"
    for region in goal_regions(maze, multi_goal):
        if bounds is not None and not _box_within(region, bounds):
            raise SystemExit(f"--config: {config}: the {maze} maze's {goals} in {region} lie outside its "
                             f"serve.goal_bounds {bounds}, and serve would refuse them")
        for box in keepout:
            if all(region[0][d] < box[1][d] and box[0][d] < region[1][d] for d in range(2)):  # as serve's open box
                raise SystemExit(f"--config: {config}: the {maze} maze's {goals} in {region} meet its "
                                 f"serve.goal_keepout box {box}, and serve would refuse them")


def _box_within(inner, outer) -> bool:
    """Whether box `inner` [[x_min, y_min], [x_max, y_max]] lies inside box `outer`."""
    return all(outer[0][d] <= inner[0][d] and inner[1][d] <= outer[1][d] for d in range(2))


def cmd_bench(a) -> None:
    """Median latency of one PyTorch denoise call, to compare with `df_planner bench`."""
    import torch

    from .export import load_model

    torch.set_num_threads(a.threads)
    model, cfg, _ = load_model(Path(a.checkpoint))
    x = torch.randn(a.batch, cfg.tokens, cfg.layout.token_dim)
    k = torch.randint(0, cfg.timesteps, (a.batch, cfg.tokens))
    times = []
    with torch.inference_mode():
        for i in range(a.warmup + a.iters):
            start = time.perf_counter()
            model(x, k)
            if i >= a.warmup:
                times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    print(json.dumps({"backend": "pytorch", "threads": a.threads, "batch": a.batch, "tokens": cfg.tokens,
                      "iters": a.iters, "median_ms": statistics.median(times),
                      "p99_ms": times[int(0.99 * (len(times) - 1))]}))


def _count(text: str) -> int:
    """A whole number >= 1, for argparse."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return n


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="df-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datagen", help="generate a dataset of episodes (.npz + manifest; fruit-swap: a folder "
                                       "of ROS 2 bags + manifest.json)")
    p.add_argument("task", choices=["pointmass", "maze2d", "fruit-swap"])
    p.add_argument("--episodes", type=_count, default=400, help="pointmass, fruit-swap (one bag per episode)")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap", help="fruit-swap: bag storage")
    p.add_argument("--distractor", action="store_true", help="fruit-swap: a random occluder in the front camera")
    p.add_argument("--length", type=_count, default=200, help="pointmass")
    p.add_argument("--maze", choices=list(MAZE2D_STEPS), help="maze2d (required)")
    p.add_argument("--steps", type=int, help="maze2d (default: D4RL's size, " +
                   ", ".join(f"{k} {v:_}" for k, v in MAZE2D_STEPS.items()) + ")")
    p.add_argument("--seed", type=int, default=0, help="seed of the whole dataset (the manifest records it)")
    p.add_argument("--out", required=True, help="the .npz (its manifest .json is written beside it); fruit-swap: "
                                                "a folder")
    p.set_defaults(func=cmd_datagen)

    p = sub.add_parser("train", help="train a Diffusion Forcing model; resumes from <out>/checkpoint.pt")
    _add_train_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (denoise + denoise_vjp) with metadata")
    p.add_argument("--checkpoint", required=True, help="a training checkpoint (RUN/checkpoint.pt or a snapshot)")
    p.add_argument("--out", required=True, help="path of the denoise graph, e.g. onnx/models/pointmass.onnx")
    p.add_argument("--golden", help="also write golden vectors for the Rust parity test into this folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="closed-loop evaluation with the Rust planner (df_planner serve) in the loop")
    p.add_argument("task", choices=["maze2d", "fruit-swap"])
    p.add_argument("--maze", choices=["umaze", "medium", "large"], help="maze2d (required)")
    p.add_argument("--episodes", type=_count, default=100, help="episodes per configuration (default: 100)")
    p.add_argument("--planner", help="path of the df_planner binary (maze2d: required; fruit-swap: the node's "
                                     "closed loop, with --config)")
    p.add_argument("--config", help="node config, e.g. config/maze2d_umaze.yaml or config/fruit_swap.yaml")
    p.add_argument("--checkpoint", help="fruit-swap: a camera model checkpoint, run by the PyTorch reference "
                                        "policy (configs: memory, memoryless, distractor, distractor_k2)")
    p.add_argument("--out", help="results.json, required except with --probe (maze2d: a .png of planned vs executed "
                                 "paths is written beside it)")
    p.add_argument("--configs", help="comma-separated subset of: df_mcg, no_mcg, mcg_redraws, no_guidance, "
                                     "full_sequence, warm_start, pd_controller, no_hold, straight_to_goal (no planner: PD "
                                     "straight at the goal) (default: these), the probe mcg_prior, "
                                     "no_mcg_prior, node_loop (df_mcg through the robot node's own loop), "
                                     "node_loop_<T>ms (the same, each plan taking T ms of sim time, e.g. "
                                     "node_loop_100ms) and node_loop_no_mcg_<T>ms (no_mcg so), "
                                     "node_loop_measured and node_loop_no_mcg_measured (plan times drawn from "
                                     "--plan-times); "
                                     "fruit-swap: memory, memoryless, distractor, distractor_k2")
    p.add_argument("--probe", action="store_true", help="fruit-swap: the first planned move for each of the six "
                                                          "arrangements (does the policy read its cameras?)")
    p.add_argument("--seed", type=int, default=0, help="episode i uses env seed seed + i (fruit-swap: 10000 + "
                                                         "seed + i, unseen by the demonstrations)")
    p.add_argument("--multi-goal", action="store_true", help="Multi2D: a random goal every episode")
    p.add_argument("--planner-seed-offset", type=int, default=0, metavar="N", help="maze2d: episode i's planner "
                   "seed is seed + i + N instead of seed + i: the same episodes under other planner noise, to see "
                   "how many outcomes the planner's noise alone changes")
    p.add_argument("--plan-times", metavar="FILE", help="maze2d, with --configs node_loop_measured or "
                   "node_loop_no_mcg_measured: the JSON line `df_planner bench --config C` printed (its "
                   "plan_latency_buckets); each plan takes a time drawn from them, seeded by the episode's "
                   "planner seed")
    p.add_argument("--workers", type=int, default=1, help="planner processes running episodes in parallel (fruit-swap --checkpoint runs one)")
    p.add_argument("--merge", nargs="+", metavar="RESULTS", help="maze2d: pool results.json files of one evaluation "
                   "over adjacent env seed ranges into --out (scores concatenated, statistics recomputed)")
    p.add_argument("--pair", nargs=2, metavar=("A", "B"), help="maze2d: A − B by seed between two results.json "
                   "(RESULTS[:CONFIG]) over the env seeds both ran: paired mean ± standard error, t, wins, "
                   "where one reached the goal and the other did not, and the same difference by the start's "
                   "route length to its goal (cells along the corridors)")
    p.add_argument("--curve", metavar="RUN_DIR", help="learning curve instead: evaluate --configs (default df_mcg) "
                                                      "with every snapshot in RUN_DIR/snapshots (written by train "
                                                      "--snapshot-every); with df_mcg,no_mcg also their paired "
                                                      "difference per snapshot")
    p.add_argument("--curve-every", type=int, metavar="STEPS", help="--curve: evaluate only snapshots at "
                   "multiples of STEPS (those evaluated before stay on the curve)")
    p.add_argument("--objective-check", metavar="H,...", help="instead: over plans of H steps, does the config's "
                                                               "goal reward prefer pressing straight at the goal or "
                                                               "the route around the walls, from each start?")
    p.add_argument("--action-spread", type=int, metavar="K", help="instead: from each start, one plan per planner "
                   "seed 0..K-1 under each of --configs (default df_mcg,no_mcg,no_guidance): how its executed "
                   "actions vary across seeds and how far the configurations' mean executed actions lie apart "
                   "(--out: a JSON, and the actions as .npz beside it)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="PyTorch denoise latency (median of many calls)")
    p.add_argument("--checkpoint", required=True, help="a training checkpoint (RUN/checkpoint.pt)")
    p.add_argument("--batch", type=int, default=1, help="samples per call (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--warmup", type=int, default=20, help="calls before timing (default: 20)")
    p.add_argument("--iters", type=int, default=500, help="timed calls (default: 500)")
    p.set_defaults(func=cmd_bench)

    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    args.func(args)
    return 0


def run(argv=None) -> int:
    """The `df-train` command: `main`, with the errors a user can usually fix (a missing file,
    a value that does not fit, a planner that exited) printed as one line, with their type,
    instead of a traceback. DF_TRAIN_TRACEBACK=1 raises them with it."""
    from .eval.planner_process import PlannerError

    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError, PlannerError) as e:
        if os.environ.get("DF_TRAIN_TRACEBACK", "0") not in ("", "0"):
            raise
        command = " ".join(filter(None, [args.command, getattr(args, "task", None)]))
        print(f"df-train {command}: {e} [{type(e).__name__}; DF_TRAIN_TRACEBACK=1 for the traceback]",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
