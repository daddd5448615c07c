"""Noise schedules: the cumulative signal fraction alpha_bar[t] for training timesteps t = 0..K-1.

Timestep -1 means clean data (alpha_bar = 1); it is never fed to the network (see CONTRACT.md).
"""

import math

import numpy as np

SCHEDULES = ("linear", "cosine", "sigmoid")


def betas(name: str, timesteps: int) -> np.ndarray:
    t = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    if name == "linear":
        # DDPM's 1e-4..0.02 over 1000 steps, rescaled so other K keep the same total noise.
        scale = 1000.0 / timesteps
        return np.clip(np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64), 0, 0.999)
    if name == "cosine":
        # Nichol & Dhariwal (2021), s = 0.008.
        s = 0.008
        f = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        ab = f / f[0]
    elif name == "sigmoid":
        # Jabri et al. (2022), start -3, end 3, tau 1.
        start, end, tau = -3.0, 3.0, 1.0
        v_start = 1 / (1 + math.exp(-start / tau))
        v_end = 1 / (1 + math.exp(-end / tau))
        f = -(1 / (1 + np.exp(-((t * (end - start) + start) / tau))) - v_end) / (v_end - v_start)
        ab = f / f[0]
    else:
        raise ValueError(f"schedule: unknown name {name!r}, expected one of {SCHEDULES}")
    return np.clip(1 - ab[1:] / ab[:-1], 0, 0.999)


def alphas_cumprod(name: str, timesteps: int) -> np.ndarray:
    """alpha_bar[t] for t = 0..K-1, float64, strictly decreasing in (0, 1)."""
    return np.cumprod(1.0 - betas(name, timesteps))


def level_to_timestep(level: int, timesteps: int, sampling_steps: int) -> int:
    """Scheduling-matrix level m in 0..S (0 = clean, S = pure noise) -> timestep in -1..K-1.

    Integer arithmetic so that Python and Rust agree exactly.
    """
    return (level * timesteps) // sampling_steps - 1
