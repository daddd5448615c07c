"""D4RL's maze2d dataset generator (scripts/generation/generate_maze2d_datasets.py) re-implemented.

One continuous run of the ball, never reset: the waypoint controller of
d4rl/pointmaze/waypoint_controller.py steers it to a random target (an empty cell plus
U(-0.1, 0.1) noise). When the controller reports the target's cell reached, or after
max_episode_steps steps without reaching it, a new target is drawn and a new segment starts.
D4RL's files mark these boundaries in `timeouts` ("instances when the randomly selected navigation
goal has been reached", D4RL issue #85); here they are `episode_starts`. No action noise: that is
the script's default (`--noisy` was not used for the maze2d-*-v1 files).

`rewards` are what maze2d-*-sparse-v1 holds after scripts/generation/relabel_maze2d_rewards.py:
1 when observation t (not t + 1, D4RL issue #194) is within 0.5 of the fixed evaluation goal.
`goals` keeps the controller's current target, from which other rewards can be derived.

Deliberate difference: when a segment ends D4RL's script forgets to advance its observation, so
its files record the pre-step observation twice; here every observation is the true state.
"""

import math
from functools import lru_cache

import numpy as np

from ..envs.maze2d import MAX_EPISODE_STEPS, Maze2DEnv, goal_xy, wall_grid

P_GAIN = 10.0
D_GAIN = -1.0
SOLVE_THRESH = 0.1  # a waypoint (or the target) counts as reached within this distance ...
# ... if the ball also moved less than this since the last call: always (|v| <= ~5.2, dt 0.01) except
# on the first call after a new plan, when D4RL measures from the start cell.
VEL_THRESH = 0.1
WAYPOINT_JITTER = 0.2  # each waypoint but the last is its cell minus U(0, 0.2) per axis
# D4RL GridEnv's actions as (d row, d col): noop, up, down, left, right. argmax ties go to the
# first, which picks the route where two are equally short.
MOVES = np.array([(0, 0), (0, -1), (0, 1), (-1, 0), (1, 0)])
Q_SWEEPS = 50
DISCOUNT = 0.99
MAX_ROUTE = 100


class WaypointController:
    """PD control towards a route of cell waypoints found by Q-iteration on the layout grid."""

    def __init__(self, maze: str, rng: np.random.Generator):
        walls = wall_grid(maze)
        self.rng = rng
        rows, cols = walls.shape
        cells = np.indices((rows, cols)).reshape(2, -1).T
        nxt = cells[:, None, :] + MOVES[None]
        inside = (nxt >= 0).all(-1) & (nxt < (rows, cols)).all(-1)
        clipped = np.clip(nxt, 0, (rows - 1, cols - 1))
        legal = inside & ~walls[clipped[..., 0], clipped[..., 1]]
        nxt = np.where(legal[..., None], nxt, cells[:, None, :])  # an illegal move stays put (noop)
        self.next_state = nxt[..., 0] * cols + nxt[..., 1]  # [cells, moves] -> cell index
        self.cols = cols
        # Q-values per target cell and routes per (start, target) are deterministic, so computed once.
        self.q_values = lru_cache(maxsize=None)(self._q_values)
        self.route = lru_cache(maxsize=None)(self._route)
        self.target = None
        self.waypoints: list[tuple[float, float]] = []
        self.index = 0
        self.prev = (0.0, 0.0)

    def _q_values(self, target: int) -> np.ndarray:
        """Q [cells, moves]: reward 1 for being in the target cell, as D4RL's q_iteration."""
        reward = np.zeros(len(self.next_state))
        reward[target] = 1.0
        q = np.zeros(self.next_state.shape)
        for _ in range(Q_SWEEPS):
            q = reward[:, None] + DISCOUNT * q.max(axis=1)[self.next_state]
        return q

    def _route(self, start: int, target: int) -> tuple[int, ...]:
        """The greedy rollout of the Q-values from start: the cells visited, ending at the target."""
        q, cells, s = self.q_values(target), [], start
        for _ in range(MAX_ROUTE):
            s = int(self.next_state[s, np.argmax(q[s])])
            cells.append(s)
            if s == target:
                return tuple(cells)
        raise RuntimeError(f"no route from cell {divmod(start, self.cols)} to {divmod(target, self.cols)}")

    def _plan(self, x: float, y: float, target: tuple[int, int]) -> None:
        start = (round(x), round(y))  # D4RL's gridify_state
        cells = self.route(start[0] * self.cols + start[1], target[0] * self.cols + target[1])
        jitter = self.rng.uniform(0.0, WAYPOINT_JITTER, (len(cells) - 1, 2))
        self.waypoints = [(i - dx, j - dy) for (i, j), (dx, dy) in zip((divmod(c, self.cols) for c in cells), jitter)]
        self.waypoints.append(target)
        self.index = 0
        self.prev = start
        self.target = target

    def __call__(self, obs, target) -> tuple[np.ndarray, bool]:
        """(action, whether the target's cell is reached and the ball is nearly still)."""
        x, y, vx, vy = (float(v) for v in obs[:4])
        cell = (round(float(target[0])), round(float(target[1])))
        if cell != self.target:
            self._plan(x, y, cell)
        moved = math.hypot(self.prev[0] - x, self.prev[1] - y)
        solved = math.hypot(x - cell[0], y - cell[1]) < SOLVE_THRESH and moved < VEL_THRESH
        wx, wy = cell if solved else self.waypoints[self.index]
        if not solved and math.hypot(x - wx, y - wy) < SOLVE_THRESH and moved < VEL_THRESH:
            self.index += 1  # the action below still heads for the waypoint just reached, as D4RL
        self.prev = (x, y)
        ax = min(max(P_GAIN * (wx - x) + D_GAIN * vx, -1.0), 1.0)
        ay = min(max(P_GAIN * (wy - y) + D_GAIN * vy, -1.0), 1.0)
        return np.array([ax, ay]), solved


def generate(maze: str, steps: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    env = Maze2DEnv(maze, rng)
    controller = WaypointController(maze, rng)
    limit = MAX_EPISODE_STEPS[maze]
    observations = np.empty((steps, 4))
    actions = np.empty((steps, 2))
    goals = np.empty((steps, 2))
    starts = [0]
    target = env.random_point()
    obs = env.reset()
    since = 0  # steps since the current target was drawn
    for n in range(steps):
        action, done = controller(obs, target)
        observations[n], actions[n], goals[n] = obs, action, target
        obs, _, _ = env.step(action)
        since += 1
        if done or since > limit:  # D4RL: `ts >= max_episode_steps` checked before its increment
            target, since = env.random_point(), 0
            starts.append(n + 1)
    rewards = np.hypot(*(observations[:, :2] - goal_xy(maze)).T) <= 0.5
    return {
        "observations": observations.astype(np.float32),
        "actions": actions.astype(np.float32),
        "rewards": rewards.astype(np.float32),
        "episode_starts": np.array([s for s in starts if s < steps], dtype=np.int64),
        "goals": goals.astype(np.float32),
    }


def expert_episode(env: Maze2DEnv, cell=None) -> tuple[float, int | None]:
    """One episode of `env` with the waypoint controller as the policy (the D4RL "expert").

    Returns the total reward and the first step at which the controller reported the goal reached.
    """
    controller = WaypointController(env.maze, env.rng)
    obs, total, solved_at = env.reset(cell), 0.0, None
    for t in range(env.max_episode_steps):
        action, solved = controller(obs, env.goal)
        if solved and solved_at is None:
            solved_at = t
        obs, reward, _ = env.step(action)
        total += reward
    return total, solved_at
