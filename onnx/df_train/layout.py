"""Token layout: how frames of (previous action, observation, reward) stack into one token.

Frame i holds the action that led into observation i, then observation i (then, optionally,
the reward received on arriving there). The first frame of an episode has a zero action. A
token stacks `frame_stack` consecutive frames, so a token holds frame_stack * frame_dim floats.
"""

from dataclasses import asdict, dataclass

import numpy as np

FIELD_ORDER = ("action", "observation", "reward")


@dataclass
class TokenLayout:
    observation_dim: int
    action_dim: int
    frame_stack: int
    reward: bool = False

    @property
    def frame_dim(self) -> int:
        return self.action_dim + self.observation_dim + int(self.reward)

    @property
    def token_dim(self) -> int:
        return self.frame_stack * self.frame_dim

    def to_dict(self) -> dict:
        d = asdict(self)
        d["field_order"] = list(FIELD_ORDER[: 3 if self.reward else 2])
        d["frame_dim"] = self.frame_dim
        d["token_dim"] = self.token_dim
        return d

    def frames(self, observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray | None) -> np.ndarray:
        """One episode -> frames [N, frame_dim]; actions[i] is taken after observations[i]."""
        n = len(observations)
        prev_actions = np.concatenate([np.zeros((1, self.action_dim)), actions[: n - 1]], axis=0)
        parts = [prev_actions, observations]
        if self.reward:
            prev_rewards = np.concatenate([[0.0], rewards[: n - 1]])[:, None]
            parts.append(prev_rewards)
        return np.concatenate(parts, axis=1).astype(np.float32)
