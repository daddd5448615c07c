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


def check_sizes(source: Path, layout: TokenLayout, observations: np.ndarray, actions: np.ndarray) -> None:
    """The data's observation and action sizes are the layout's, or an error naming the flag."""
    for flag, expected, array, what in (("--observation-dim", layout.observation_dim, observations, "observations"),
                                        ("--action-dim", layout.action_dim, actions, "actions")):
        if array.ndim != 2 or array.shape[1] != expected:
            raise ValueError(f"{flag} {expected}: {source} has {what} of shape {list(array.shape)} "
                             f"(expected [steps, {expected}])")


class TokenWindows:
    """Random windows of `tokens` tokens from a set of episodes."""

    def __init__(self, path: Path, layout: TokenLayout, tokens: int, continuous: bool = False):
        """`continuous`: one run, ignoring episode_starts (D4RL maze2d never resets; its
        segments only mark reached targets, so windows may span them)."""
        data = np.load(path)
        check_sizes(path, layout, data["observations"], data["actions"])
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

    def sample(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Tokens [B, T, D] (normalized, zero-padded), mask [B, T] of fully observed tokens, and
        the model's other inputs (none here; see DemoWindows)."""
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
        return x.reshape(batch, t, fs * fd), mask, {}


class DemoWindows:
    """Token windows from a folder of fruit-swap demonstration bags, with each token's camera
    images (those of its last frame: what the robot sees when it plans the next token).

    Each episode ends with `rest_tokens` more tokens at rest (its last state and command
    repeated): the policy must learn to stay once the swap is done. Half of the windows start
    at the episode's start (the whole history is in view: memory), half anywhere (a short
    context, as a memoryless policy has). A random number of leading tokens have images (the
    observed past and present); the rest are the future, image level `image_levels` (absent).
    Some observed images are corrupted with Gaussian noise and tagged with their noise level.

    Noise levels are independent per token, as Diffusion Forcing trains, except in a
    `planning_fraction` of windows that look like planning: observed tokens nearly clean, the
    future noisier the further it is. With independent levels alone a slightly noisy future
    token always gives away where the arm goes, and the network learned to ignore its images
    (measured: swapping the fruits did not change a plan).
    """

    NOISE_STD_PER_LEVEL = 0.15

    def __init__(self, folder: Path, layout: TokenLayout, tokens: int, timesteps: int, image_levels: int = 4,
                 rest_tokens: int = 2, noisy_fraction: float = 0.3, planning_fraction: float = 0.5,
                 short_context: int = 1):
        from .datagen.fruit_swap import listed_bags, read_demo_bag

        bags = listed_bags(Path(folder))
        fs = layout.frame_stack
        self.layout, self.tokens, self.image_levels, self.noisy_fraction = layout, tokens, image_levels, noisy_fraction
        self.timesteps, self.planning_fraction, self.short_context = timesteps, planning_fraction, short_context
        self.episodes, self.images = [], []
        for bag in bags:
            demo = read_demo_bag(bag)
            check_sizes(bag, layout, demo["state"], demo["action"])
            n = len(demo["action"])
            # Token j ends with observation j·fs, as the planner's context token ends with the
            # current observation: the first token repeats the first frame (as the planner does
            # before it has frame_stack frames), the last ones repeat the final rest.
            head = np.concatenate([np.zeros(fs - 1, dtype=np.int64), np.arange(n)])
            idx = np.concatenate([head, np.full((-len(head)) % fs + rest_tokens * fs, n - 1)])
            frames = layout.frames(demo["state"], demo["action"], None)[idx]
            token_last = idx[fs - 1 :: fs]
            self.episodes.append(frames)
            self.images.append(np.stack([demo["front"][token_last], demo["wrist"][token_last]], axis=1))
        frames = np.concatenate(self.episodes)
        self.mean = frames.mean(axis=0)
        self.std = np.maximum(frames.std(axis=0), 1e-2)
        self.cameras = 2

    def normalize(self, frames: np.ndarray) -> np.ndarray:
        return (frames - self.mean) / self.std

    def sample(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Tokens [B, T, D], mask [B, T], and the camera inputs: images [B, T, 2, 32, 32, 3] in
        [0, 1] and image_level [B, T]; plus the training timesteps k [B, T]."""
        fs, t, fd = self.layout.frame_stack, self.tokens, self.layout.frame_dim
        x = np.zeros((batch, t, fs * fd), dtype=np.float32)
        mask = np.zeros((batch, t), dtype=bool)
        size = self.images[0].shape[2]
        images = np.zeros((batch, t, self.cameras, size, size, 3), dtype=np.float32)
        level = np.full((batch, t), self.image_levels, dtype=np.int64)
        for i in range(batch):
            e = rng.integers(len(self.episodes))
            n_tok = len(self.episodes[e]) // fs
            start = 0 if rng.random() < 0.5 else int(rng.integers(n_tok))
            stop = min(start + t, n_tok)
            x[i, : stop - start] = self.normalize(self.episodes[e][start * fs : stop * fs]).reshape(stop - start, fs * fd)
            mask[i, : stop - start] = True
            # Half the windows see at most `short_context` tokens: planning from little history
            # (the episode start) is where the images decide the plan; with more history the
            # arm's motion so far mostly gives the next token away.
            longest = stop - start if rng.random() < 0.5 else min(self.short_context, stop - start)
            seen = int(rng.integers(1, longest + 1))
            observed = self.images[e][start : start + seen].astype(np.float32) / 255.0
            noisy = rng.random(seen) < self.noisy_fraction
            level[i, :seen] = np.where(noisy, rng.integers(1, self.image_levels, seen), 0)
            std = (level[i, :seen] * self.NOISE_STD_PER_LEVEL)[:, None, None, None, None]
            images[i, :seen] = np.clip(observed + std * rng.standard_normal(observed.shape), 0.0, 1.0)
        k = rng.integers(0, self.timesteps, (batch, t))
        for i in np.flatnonzero(rng.random(batch) < self.planning_fraction):
            seen = int((level[i] < self.image_levels).sum())
            k[i, :seen] = rng.integers(0, max(1, self.timesteps // 20), seen)
            # The nearest future token's level is uniform (at inference it starts from pure
            # noise with only the context to go on); further tokens are at least as noisy.
            if seen < t:
                near = rng.integers(0, self.timesteps)
                k[i, seen:] = np.sort(rng.integers(near, self.timesteps, t - seen))
                k[i, seen] = near
        return x, mask, {"images": images, "image_level": level, "k": k}
