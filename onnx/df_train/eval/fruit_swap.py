"""`df-train eval fruit-swap`: the fruit-swap policy in closed loop.

`--planner P --config C` drives the Rust node's own pipeline (`df_planner serve` with a camera
model: frames into the rings, the planner task with memory, the control tick with its safety
filter), one simulator step per request; that is the evaluation. `--checkpoint C` runs the
PyTorch reference sampler instead, the specification the node is checked against.

Every `frame_stack` control steps the policy plans: the context tokens are the observed
history (every token since the episode start with memory; only the present token without),
each with the camera images of its last frame; the planned tokens follow, without images,
denoised along a pyramid scheduling matrix. The first planned token's actions are executed.
"""

import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import matrices
from ..envs.fruit_swap import FruitSwapEnv
from ..export import load_model
from ..reference_sampler import ReferenceSampler, SamplerSettings, timestep_rows
from .planner_process import Planner


@dataclass
class PolicySettings:
    memory: bool = True
    # Image level given with observed images: 0 = clean; k > 0 tells the model they are noisy.
    observation_level: int = 0
    plan_tokens: int = 2
    sampling_steps: int = 10
    seed: int = 0


class ReferencePolicy:
    def __init__(self, checkpoint: Path, settings: PolicySettings):
        self.model, self.cfg, ckpt = load_model(Path(checkpoint))
        if not self.cfg.bags:
            raise ValueError(f"{checkpoint}: not a camera model (trained without --bags)")
        self.s = settings
        self.mean = np.asarray(ckpt["normalization"]["mean"], dtype=np.float32)
        self.std = np.asarray(ckpt["normalization"]["std"], dtype=np.float32)
        layout = self.cfg.layout
        self.fs, self.fd, self.adim = layout.frame_stack, layout.frame_dim, layout.action_dim
        self.sampler = ReferenceSampler(self.model, self.model.alphas_cumprod.numpy(), SamplerSettings(
            stabilization_level=self.cfg.stabilization_level, noise_clip=self.cfg.noise_clip))
        self.max_context = self.cfg.tokens - settings.plan_tokens
        self.gen = torch.Generator().manual_seed(settings.seed)

    def reset(self) -> None:
        self.frames: list[np.ndarray] = []  # normalized (prev action, state) per step
        self.token_images: list[np.ndarray] = []  # [2, 32, 32, 3] in [0, 1], one per context token

    def observe(self, prev_action: np.ndarray, obs: dict) -> None:
        frame = np.concatenate([prev_action, obs["state"]]).astype(np.float32)
        self.frames.append((frame - self.mean) / self.std)
        if (len(self.frames) - 1) % self.fs == 0:
            self.token_images.append(np.stack([obs["front"], obs["wrist"]]).astype(np.float32) / 255.0)

    def plan(self) -> np.ndarray:
        """The next `frame_stack` actions, after an observation at a token boundary."""
        padded = [self.frames[0]] * (self.fs - 1) + self.frames
        context = np.stack(padded).reshape(-1, self.fs * self.fd)
        images = np.stack(self.token_images)
        keep = min(len(context), self.max_context if self.s.memory else 1)
        context, images = context[-keep:], images[-keep:]
        c, h = len(context), self.s.plan_tokens
        levels = np.full((1, c + h), self.model.cfg.image_levels, dtype=np.int64)  # future: absent
        levels[0, :c] = self.s.observation_level
        all_images = np.zeros((1, c + h, *images.shape[1:]), dtype=np.float32)
        all_images[0, :c] = images
        inputs = {"images": torch.from_numpy(all_images), "image_level": torch.from_numpy(levels)}
        rows = timestep_rows(matrices.build("pyramid", h, self.s.sampling_steps), c, self.cfg.timesteps,
                             self.s.sampling_steps)
        x = torch.cat([torch.from_numpy(context)[None],
                       torch.randn(1, h, self.fs * self.fd, generator=self.gen).clamp(-self.cfg.noise_clip,
                                                                                      self.cfg.noise_clip)], dim=1)
        noise = torch.randn(len(rows) - 1, *x.shape, generator=self.gen)
        model = self.model
        self.sampler.model = lambda x_in, k_in: model(x_in, k_in, images=inputs["images"], image_level=inputs["image_level"])
        x = self.sampler.sample(x, rows, noise)[-1]
        token = x[0, c].numpy().reshape(self.fs, self.fd) * self.std + self.mean
        return token[:, : self.adim].astype(np.float64)


def run_episode(policy: ReferencePolicy, seed: int, distractor: bool) -> dict:
    env = FruitSwapEnv(seed=seed, distractor=distractor)
    obs = env.observe()
    policy.reset()
    prev = np.zeros(4)
    success, done, plan_ms = False, False, []
    while not done:
        policy.observe(prev, obs)
        start = time.perf_counter()
        actions = policy.plan()
        plan_ms.append((time.perf_counter() - start) * 1e3)
        for i, action in enumerate(actions):
            obs, success, done = env.step(action)
            prev = action
            if done:
                break
            if i < len(actions) - 1:
                policy.observe(prev, obs)
    return {"success": success, "steps": env.t, "plan_ms": plan_ms, "start_slots": env.start_slots}


def summary(runs: list[dict]) -> dict:
    """Success rate, mean time to success (10 Hz steps) and plan latency over episodes."""
    times = [r["steps"] for r in runs if r["success"]]
    plan_ms = sorted(ms for r in runs for ms in r["plan_ms"])
    return {
        "episodes": len(runs), "success_rate": statistics.fmean(r["success"] for r in runs),
        "time_to_success_s_mean": statistics.fmean(times) / 10.0 if times else None,
        "plan_ms_p50": plan_ms[len(plan_ms) // 2], "plan_ms_p99": plan_ms[int(0.99 * (len(plan_ms) - 1))],
    }


CONFIGS = {
    "memory": (PolicySettings(memory=True), False),
    "memoryless": (PolicySettings(memory=False), False),
    "distractor": (PolicySettings(memory=True), True),
    "distractor_k2": (PolicySettings(memory=True, observation_level=2), True),
}


def evaluate(checkpoint: Path, episodes: int, out: Path, configs=None, seed: int = 10_000) -> dict:
    """Success rate, time to success and plan latency per configuration; episode i uses env
    seed `seed + i` (demonstrations use seeds from 0, so these starts are unseen draws)."""
    results = {}
    for name in configs or list(CONFIGS):
        settings, distractor = CONFIGS[name]
        policy = ReferencePolicy(checkpoint, settings)
        runs = [run_episode(policy, seed + i, distractor) for i in range(episodes)]
        results[name] = summary(runs) | {
            "memory": settings.memory, "observation_level": settings.observation_level, "distractor": distractor,
            "successes": [bool(r["success"]) for r in runs],
        }
        print(f"fruit-swap {name}: success {results[name]['success_rate']:.2f} over {episodes} episodes", flush=True)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
    return results


def arrangement_probe(checkpoint: Path, seeds: int = 3) -> dict:
    """Where the plan from the start state ends, for each of the six arrangements of the fruits
    with the same noise seeds. A policy that reads its cameras plans a different first move per
    arrangement; identical rows mean the images are ignored."""
    from ..envs.fruit_swap import APPLE, ORANGE, SLOTS

    policy = ReferencePolicy(Path(checkpoint), PolicySettings(plan_tokens=3))
    rows = {}
    for apple, orange in [(a, o) for a in range(3) for o in range(3) if a != o]:
        env = FruitSwapEnv(seed=0)
        env.fruit_pos[APPLE, :2], env.fruit_pos[ORANGE, :2] = SLOTS[apple], SLOTS[orange]
        ends = []
        for seed in range(seeds):
            policy.gen.manual_seed(seed)
            policy.reset()
            policy.observe(np.zeros(4), env.observe())
            ends.append(policy.plan()[-1, :3].round(3).tolist())
        rows[f"apple {apple}, orange {orange}"] = ends
        print(f"apple in slot {apple}, orange in slot {orange}: end of first token {ends}", flush=True)
    return rows


# Each node configuration: `df_planner serve` overrides of the config, and whether the front
# camera sees a distractor (never seen in training).
NODE_CONFIGS = {
    "memory": ([], False),
    "memoryless": (["--context-tokens", "1"], False),
    "distractor": ([], True),
    "distractor_k2": (["--image-level", "2"], True),
}


def run_node_episode(planner: Planner, seed: int, distractor: bool) -> dict:
    """One episode through the node: the state and both camera frames in at every 10 Hz step,
    the tick's action out and into the simulator."""
    env = FruitSwapEnv(seed=seed, distractor=distractor)
    obs = env.observe()
    planner.ask({"op": "reset"})
    success, done, plan_ms, fallback_ticks, placements = False, False, [], 0, 0
    layout = tuple(env.slot_contents())
    while not done:
        start = time.perf_counter()
        reply = planner.ask({"op": "step", "state": obs["state"].tolist(),
                             "images": [obs["front"].ravel().tolist(), obs["wrist"].ravel().tolist()]})
        if reply["replanned"]:
            plan_ms.append((time.perf_counter() - start) * 1e3)
        fallback_ticks += reply["source"] != "plan"
        obs, success, done = env.step(np.asarray(reply["action"]))
        now = tuple(env.slot_contents())
        if env.held is None and now != layout:
            placements += 1
        layout = now if env.held is None else layout
    diagnostics = planner.ask({"op": "stats"})["diagnostics"]
    return {"success": success, "steps": env.t, "plan_ms": plan_ms, "fallback_ticks": fallback_ticks,
            "placements": placements, "tick_ms_p99": diagnostics["tick_latency"]["p99_ms"],
            "start_slots": env.start_slots, "end_slots": list(layout)}


def evaluate_node(binary: str, config: str, episodes: int, out: Path, configs=None, seed: int = 10_000,
                  workers: int = 1) -> dict:
    """Success rate, time to success, plan and control-tick latency per configuration; episode
    i uses env seed `seed + i` (the demonstrations use seeds from 0), split over `workers`
    planner processes."""
    results = {}
    for name in configs or list(NODE_CONFIGS):
        args, distractor = NODE_CONFIGS[name]

        def worker(w: int, args=args, distractor=distractor) -> list[tuple[int, dict]]:
            planner = Planner(binary, config, args)
            try:
                return [(i, run_node_episode(planner, seed + i, distractor)) for i in range(w, episodes, workers)]
            finally:
                planner.close()

        with ThreadPoolExecutor(workers) as pool:
            runs = [r for _, r in sorted(sum(pool.map(worker, range(workers)), []), key=lambda p: p[0])]
        results[name] = summary(runs) | {
            "tick_ms_p99_max": max(r["tick_ms_p99"] for r in runs),
            "fallback_ticks_mean": statistics.fmean(r["fallback_ticks"] for r in runs),
            "placements_mean": statistics.fmean(r["placements"] for r in runs),
            "serve_args": args, "distractor": distractor, "seed": seed,
            "successes": [bool(r["success"]) for r in runs], "placements": [r["placements"] for r in runs],
        }
        print(f"fruit-swap {name}: success {results[name]['success_rate']:.2f} over {episodes} episodes", flush=True)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
    return results
