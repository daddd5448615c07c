"""Diffusion Forcing training: every token gets its own, independent noise level.

Checkpoints are written atomically every `checkpoint_every` steps and training resumes from
the last one after an interruption, with optimizer, EMA and RNG state restored.
"""

import copy
import dataclasses
import json
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import schedule
from .data import DemoWindows, TokenWindows, dataset_hash
from .layout import TokenLayout
from .model import DFTransformer, ModelConfig
from .provenance import git_commit


@dataclass
class TrainConfig:
    out: str
    observation_dim: int
    action_dim: int
    # Exactly one source: an episodes .npz (`data`) or a folder of demonstration bags with camera
    # images (`bags`, written by `df-train datagen fruit-swap`).
    data: str = ""
    bags: str = ""
    frame_stack: int = 4
    reward: bool = False
    tokens: int = 8
    width: int = 128
    depth: int = 4
    heads: int = 4
    parameterization: str = "v"
    schedule: str = "cosine"
    timesteps: int = 1000
    stabilization_level: int = 10
    noise_clip: float = 6.0
    steps: int = 5000
    batch: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 200
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    # Lower bound of the x0-space loss weight. Min-SNR alone weighs the noisiest tokens by
    # their SNR (~0), so what only the context can tell (which slot the arm goes to first)
    # barely counts; a floor of 1 keeps a plain x0 error there.
    min_snr_floor: float = 0.0
    seed: int = 0
    checkpoint_every: int = 500
    # Keep the EMA weights every this many steps (runs/<out>/snapshots/), for learning curves.
    snapshot_every: int = 0
    threads: int = 0
    # "cpu" or a torch device ("cuda", "cuda:1"). Where it runs does not change the recipe: the
    # noise and the batches come from the same CPU generators, so a run may resume elsewhere.
    device: str = "cpu"
    continuous: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout(self.observation_dim, self.action_dim, self.frame_stack, self.reward)

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            token_dim=self.layout.token_dim,
            max_tokens=self.tokens,
            width=self.width,
            depth=self.depth,
            heads=self.heads,
            parameterization=self.parameterization,
            cameras=2 if self.bags else 0,
        )


def loss_weight(snr: torch.Tensor, parameterization: str, gamma: float, floor: float = 0.0) -> torch.Tensor:
    """Min-SNR-gamma weighting (Hang et al., 2023), with an optional floor, both in x0 space,
    expressed for each prediction target."""
    clipped = snr.clamp(min=floor, max=gamma)
    if parameterization == "eps":
        return clipped / snr
    if parameterization == "x0":
        return clipped
    return clipped / (snr + 1)


def diffusion_loss(model: DFTransformer, x0: torch.Tensor, mask: torch.Tensor, gamma: float, gen: torch.Generator,
                   k: torch.Tensor | None = None, floor: float = 0.0, **inputs):
    """`k`: the tokens' timesteps (default: independent, uniform); `inputs`: the model's other
    inputs (camera images and their levels), passed through."""
    b, t, _ = x0.shape
    if k is None:
        k = torch.randint(0, len(model.alphas_cumprod), (b, t), generator=gen)
    k = k.to(x0.device)
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    ab = model.alphas_cumprod[k][..., None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    out = model.network(x_t, k, **inputs)
    p = model.cfg.parameterization
    target = {"x0": x0, "eps": noise, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[p]
    snr = ab[..., 0] / (1 - ab[..., 0])
    per_token = ((out - target) ** 2).mean(dim=-1) * loss_weight(snr, p, gamma, floor)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


# Fields that may change when a run is resumed: they do not change what is trained.
# Where the run and its data are found is not what it trains: the checkpoint is found in `out`,
# and the data is the same data by its sha256 (checked on resume), by whatever path.
OPERATIONAL = {"steps", "checkpoint_every", "snapshot_every", "threads", "device", "out", "data", "bags"}


def run_differences(saved: dict, wanted: dict) -> list[str]:
    """The fields in which a checkpoint's config and the run `wanted` differ, as
    "name: saved -> wanted" (fields added since it was written count as their defaults);
    empty when `wanted` continues that run."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    keys = sorted((saved.keys() | wanted.keys()) - OPERATIONAL)
    values = {k: (saved.get(k, defaults.get(k)), wanted.get(k, defaults.get(k))) for k in keys}
    return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in values.items() if old != new]


def camera_inputs(windows) -> dict | None:
    """The camera topics and the image-noise scale a camera model trains with; None without."""
    if not isinstance(windows, DemoWindows):
        return None
    from .datagen.fruit_swap import TOPICS

    return {"topics": {role: TOPICS[role] for role in ("front", "wrist")},
            "noise_std_per_level": DemoWindows.NOISE_STD_PER_LEVEL}


def build_model(cfg: TrainConfig) -> DFTransformer:
    return DFTransformer(cfg.model_config(), schedule.alphas_cumprod(cfg.schedule, cfg.timesteps))


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as e:
        raise ValueError(f"checkpoint: {path} is not a training checkpoint ({type(e).__name__}: {e})") from e


def training_device(name: str) -> torch.device:
    """The device `name` names, refused with a reason when torch cannot use it."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device: {name!r} is not a torch device (expected cpu, cuda or cuda:N): {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {name!r}, but this torch ({torch.__version__}) sees no CUDA device; "
                             f"use --device cpu")
        n = torch.cuda.device_count()
        if (device.index or 0) >= n:
            raise ValueError(f"device: {name!r}, but only {n} CUDA device(s) are visible (expected cpu or "
                             f"cuda:0..cuda:{n - 1})")
    elif device.type != "cpu":
        raise ValueError(f"device: {name!r}: expected cpu, cuda or cuda:N")
    return device


def check_training_source(data: str, bags: str) -> None:
    """Refuse anything but exactly one training source that is there, before a run folder is made."""
    if bool(data) == bool(bags):
        raise ValueError(f"data / bags: expected exactly one training source, got data={data!r} bags={bags!r}")
    if data and not Path(data).is_file():
        raise FileNotFoundError(f"data: {data}: no such file (an .npz from df-train datagen)")
    if data and Path(data).suffix != ".npz":
        raise ValueError(f"data: {data}: expected an .npz from df-train datagen")
    if bags and not (Path(bags) / "manifest.json").is_file():
        raise FileNotFoundError(f"bags: {bags}: no manifest.json there (a folder from df-train datagen fruit-swap)")


def check_settings(cfg: TrainConfig) -> None:
    """Refuse settings the exported contract or its sampler cannot use, naming the field, before
    a run folder is made (the Rust planner would refuse the model only after training)."""
    if cfg.reward:
        raise ValueError("reward: expected false: the Rust planner has no reward input, so a model whose tokens "
                         "carry the reward would see 0 as every reward it was given")
    if cfg.timesteps < 1:
        raise ValueError(f"timesteps: expected >= 1, got {cfg.timesteps}")
    if not 0 <= cfg.stabilization_level < cfg.timesteps:
        raise ValueError(f"stabilization_level: expected a level in [0, timesteps = {cfg.timesteps}), "
                         f"got {cfg.stabilization_level}")
    if not (math.isfinite(cfg.noise_clip) and cfg.noise_clip > 0):
        raise ValueError(f"noise_clip: expected a finite number > 0, got {cfg.noise_clip}")
    if cfg.heads < 1 or cfg.width % cfg.heads:
        raise ValueError(f"heads: expected a divisor of width = {cfg.width}, got {cfg.heads}")
    if cfg.parameterization == "eps":
        gain = 1 / math.sqrt(schedule.alphas_cumprod(cfg.schedule, cfg.timesteps)[-1])
        raise ValueError(f"parameterization: expected v or x0: from eps the sampler's x0 = (x_t - sqrt(1 - abar) eps) "
                         f"/ sqrt(abar) multiplies an eps error by up to {gain:.0f} at the last level of this "
                         f"schedule, and the contract clips eps, not x0")


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    device = training_device(cfg.device)
    check_settings(cfg)
    check_training_source(cfg.data, cfg.bags)
    # The data before the run folder: data that does not fit the settings leaves nothing behind.
    if cfg.bags:
        windows = DemoWindows(Path(cfg.bags), cfg.layout, cfg.tokens, cfg.timesteps)
    else:
        windows = TokenWindows(Path(cfg.data), cfg.layout, cfg.tokens, cfg.continuous)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)))
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    train_commits = []
    dataset_sha256 = dataset_hash(Path(cfg.bags) / "manifest.json" if cfg.bags else Path(cfg.data))
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        differences = run_differences(ckpt["config"], asdict(cfg))
        if differences:
            raise ValueError(f"{ckpt_path}: written by another run ({'; '.join(differences)}); resume it with its "
                             "own settings, or use another --out")
        if ckpt.get("dataset_sha256", dataset_sha256) != dataset_sha256:
            raise ValueError(f"{ckpt_path}: trained on dataset sha256 {ckpt['dataset_sha256'][:12]}…, but "
                             f"{cfg.bags or cfg.data} is now {dataset_sha256[:12]}… (regenerated?); resuming would "
                             f"mix two datasets: restore that dataset, or use another --out")
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        rng.bit_generator.state = ckpt["numpy_rng"]
        gen.set_state(ckpt["torch_rng"])
        step = ckpt["step"]
        if step >= cfg.steps:
            print(f"{ckpt_path}: already at step {step} of --steps {cfg.steps}: nothing to train (a larger --steps continues it)")
        # A checkpoint from before commits were recorded: its first steps' code is unknown.
        train_commits = ckpt.get("train_commits") or [{"step": 0, "commit": "unknown (not recorded)"}]
    # The code each (re)start trains with, for the exported contract's provenance.
    train_commits.append({"step": step, "commit": git_commit()})
    log_path = out / "log.jsonl"

    def exportable() -> dict:
        """What export needs: a snapshot is exactly this."""
        return {
            "config": asdict(cfg),
            "ema": {k: v.cpu() for k, v in ema.state_dict().items()},
            "step": step,
            "normalization": {"mean": windows.mean.tolist(), "std": windows.std.tolist()},
            "dataset_sha256": dataset_sha256,
            "train_commits": train_commits,
            # What export puts in the contract, as this run had it (later code may differ).
            "model_config": model.cfg.to_dict(),
            "camera_inputs": camera_inputs(windows),
        }

    def checkpoint():
        state = exportable() | {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "numpy_rng": rng.bit_generator.state,
            "torch_rng": gen.get_state(),
        }
        _save_atomic(state, ckpt_path)

    started = time.monotonic()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="train")
    running = None
    with log_path.open("a") as log:
        while step < cfg.steps:
            x0, mask, inputs = windows.sample(rng, cfg.batch)
            inputs = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
            loss = diffusion_loss(model, torch.from_numpy(x0).to(device), torch.from_numpy(mask).float().to(device),
                                  cfg.min_snr_gamma, gen, floor=cfg.min_snr_floor, **inputs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - cfg.ema_decay)
            step += 1
            value = loss.item()  # the one wait for the device per step
            running = value if running is None else 0.98 * running + 0.02 * value
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}")
            if step % 50 == 0 or step == cfg.steps:
                # elapsed_s: this process's training time, for the budget and the rate.
                log.write(json.dumps({"step": step, "loss": running, "lr": sched.get_last_lr()[0],
                                      "elapsed_s": round(time.monotonic() - started, 2)}) + "\n")
            # The snapshot first: a run killed between the two writes then resumes from the
            # previous checkpoint and writes this snapshot again, instead of skipping it.
            if cfg.snapshot_every and step % cfg.snapshot_every == 0:
                (out / "snapshots").mkdir(exist_ok=True)
                _save_atomic(exportable(), out / "snapshots" / f"step{step:07d}.pt")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                log.flush()
                checkpoint()
    bar.close()
    return ckpt_path
