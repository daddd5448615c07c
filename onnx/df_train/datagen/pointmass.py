"""A 2-D point mass driven by a noisy PD controller towards random goals.

Small and fast: it gives the model-link issue a real trajectory distribution to train and ship
a model on, before the maze tasks exist. Observation (x, y, vx, vy); action (ax, ay) in [-1, 1].
"""

import numpy as np

DT = 0.1
OBS_DIM = 4
ACTION_DIM = 2


def step(state: np.ndarray, action: np.ndarray) -> np.ndarray:
    pos, vel = state[:2], state[2:]
    vel = 0.9 * vel + DT * 4.0 * action
    pos = np.clip(pos + DT * vel, -2.0, 2.0)
    return np.concatenate([pos, vel])


def episode(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    state = np.concatenate([rng.uniform(-1.5, 1.5, 2), np.zeros(2)])
    goal = rng.uniform(-1.5, 1.5, 2)
    gain = rng.uniform(0.8, 1.6)
    observations, actions, rewards = [], [], []
    for _ in range(length):
        if np.linalg.norm(state[:2] - goal) < 0.1:
            goal = rng.uniform(-1.5, 1.5, 2)
        action = np.clip(gain * (goal - state[:2]) - 0.6 * state[2:] + rng.normal(0, 0.15, 2), -1, 1)
        observations.append(state)
        actions.append(action)
        state = step(state, action)
        rewards.append(float(np.linalg.norm(state[:2] - goal) < 0.1))
    return np.array(observations), np.array(actions), np.array(rewards)


def generate(episodes: int, length: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    obs, act, rew, starts = [], [], [], []
    for _ in range(episodes):
        o, a, r = episode(rng, length)
        starts.append(sum(len(x) for x in obs))
        obs.append(o)
        act.append(a)
        rew.append(r)
    return {
        "observations": np.concatenate(obs).astype(np.float32),
        "actions": np.concatenate(act).astype(np.float32),
        "rewards": np.concatenate(rew).astype(np.float32),
        "episode_starts": np.array(starts, dtype=np.int64),
    }
