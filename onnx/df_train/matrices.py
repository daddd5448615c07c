"""Scheduling matrices: row r gives each of H tokens its level in 0..S (S = pure noise, 0 = clean).

Every matrix starts with all tokens at S, ends with all tokens at 0, and no level ever rises
along a column. Rows are walked pairwise: row r -> row r+1 is one denoising step.
"""

import math

import numpy as np

KINDS = ("pyramid", "autoregressive", "full_sequence", "trapezoid")


def full_sequence(horizon: int, steps: int) -> np.ndarray:
    return np.repeat(np.arange(steps, -1, -1)[:, None], horizon, axis=1)


def autoregressive(horizon: int, steps: int) -> np.ndarray:
    rows = [np.full(horizon, steps)]
    for token in range(horizon):
        for level in range(steps - 1, -1, -1):
            row = rows[-1].copy()
            row[token] = level
            rows.append(row)
    return np.stack(rows)


def _offset_matrix(offsets: np.ndarray, steps: int) -> np.ndarray:
    height = steps + int(offsets.max()) + 1
    m = np.arange(height)[:, None]
    levels = np.clip(steps + offsets[None, :] - m, 0, steps)
    # With u > 1 and few steps a row can repeat the previous one; it would cost a network call
    # and change nothing.
    keep = np.concatenate([[True], np.any(levels[1:] != levels[:-1], axis=1)])
    return levels[keep]


def pyramid(horizon: int, steps: int, uncertainty: float) -> np.ndarray:
    """Token t starts denoising floor(u * t) rows after token 0: near tokens become clean first."""
    offsets = np.array([math.floor(uncertainty * t) for t in range(horizon)], dtype=np.int64)
    return _offset_matrix(offsets, steps)


def trapezoid(horizon: int, steps: int, uncertainty: float) -> np.ndarray:
    """Both ends become clean first; offsets are symmetric, min(t, H-1-t), so every token is
    denoised for even horizons as well (the official code leaves the middle one noisy)."""
    offsets = np.array(
        [math.floor(uncertainty * min(t, horizon - 1 - t)) for t in range(horizon)], dtype=np.int64
    )
    return _offset_matrix(offsets, steps)


def build(kind: str, horizon: int, steps: int, uncertainty: float = 1.0) -> np.ndarray:
    if horizon < 1 or steps < 1:
        raise ValueError(f"matrix: horizon and steps must be >= 1, got {horizon} and {steps}")
    if kind == "pyramid":
        return pyramid(horizon, steps, uncertainty)
    if kind == "trapezoid":
        return trapezoid(horizon, steps, uncertainty)
    if kind == "autoregressive":
        return autoregressive(horizon, steps)
    if kind == "full_sequence":
        return full_sequence(horizon, steps)
    raise ValueError(f"matrix: unknown kind {kind!r}, expected one of {KINDS}")
