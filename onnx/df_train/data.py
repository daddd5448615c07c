"""Episodes on disk -> normalized token windows with a validity mask."""

import json
from pathlib import Path

import numpy as np

from .layout import TokenLayout


def save_dataset(path: Path, arrays: dict, manifest: dict) -> None:
    """Write arrays as .npz and a manifest (with the file's sha256) beside it."""
    import hashlib

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    manifest = dict(manifest, sha256=hashlib.sha256(path.read_bytes()).hexdigest(), steps=int(len(arrays["actions"])))
    path.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")


def dataset_hash(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class TokenWindows:
    """Random windows of `tokens` tokens from a set of episodes."""

    def __init__(self, path: Path, layout: TokenLayout, tokens: int, continuous: bool = False):
        """`continuous`: one run, ignoring episode_starts (D4RL maze2d never resets; its
        segments only mark reached targets, so windows may span them)."""
        data = np.load(path)
        starts = [0] if continuous else list(data["episode_starts"])
        starts = starts + [len(data["actions"])]
        rewards = data["rewards"] if "rewards" in data else None
        self.layout = layout
        self.tokens = tokens
        self.episodes = [
            layout.frames(
                data["observations"][a:b], data["actions"][a:b], None if rewards is None else rewards[a:b]
            )
            for a, b in zip(starts[:-1], starts[1:])
            if b - a >= layout.frame_stack
        ]
        if not self.episodes:
            raise ValueError(f"{path}: no episode has at least frame_stack={layout.frame_stack} steps")
        frames = np.concatenate(self.episodes)
        self.mean = frames.mean(axis=0)
        # A floor keeps near-constant fields (a rarely-set reward) from blowing up.
        self.std = np.maximum(frames.std(axis=0), 1e-2)
        lengths = np.array([len(e) for e in self.episodes], dtype=np.float64)
        self.weights = lengths / lengths.sum()

    def normalize(self, frames: np.ndarray) -> np.ndarray:
        return (frames - self.mean) / self.std

    def sample(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens [B, T, D] (normalized, zero-padded) and mask [B, T] of fully observed tokens."""
        fs, t, fd = self.layout.frame_stack, self.tokens, self.layout.frame_dim
        x = np.zeros((batch, t * fs, fd), dtype=np.float32)
        valid = np.zeros((batch, t * fs), dtype=bool)
        for i, e in enumerate(rng.choice(len(self.episodes), size=batch, p=self.weights)):
            ep = self.episodes[e]
            start = rng.integers(0, len(ep) - fs + 1)
            chunk = ep[start : start + t * fs]
            x[i, : len(chunk)] = self.normalize(chunk)
            valid[i, : len(chunk)] = True
        mask = valid.reshape(batch, t, fs).all(axis=2)
        return x.reshape(batch, t, fs * fd), mask
