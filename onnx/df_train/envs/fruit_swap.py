"""Fruit swap, simulated: the Diffusion Forcing paper's real-robot memory task on a kinematic
tabletop.

Three slots in a row on a table, an apple and an orange in two of them. The arm must swap the
fruits through the free slot (three pick-and-place moves) and come back to rest. The swapped
end state looks like a start state, and the state between two moves looks like another start
state, so a policy that sees only the present frame cannot tell whether to start, go on or stop:
the task needs memory.

What is simulated, and how it simplifies a real arm:
- The end-effector is a point with a position target (the action) tracked at a bounded speed,
  no joints, no dynamics, no collisions; the gripper is one opening value in [0, 1].
- A fruit is grasped when the gripper closes with the end-effector low over it, and follows the
  end-effector rigidly; released over a slot it lands in the slot, elsewhere on the table.
- Cameras are rasterized in numpy, 32×32 RGB like the paper's: a fixed front camera (an oblique
  view of the table) and a wrist camera looking down from the end-effector.
- Distractors: a random occluder in the front view, never seen in training.

Units: metres and seconds; the world is x (left to right), y (away from the robot), z (up).
"""

from dataclasses import dataclass, field

import numpy as np

CONTROL_HZ = 10.0
SLOTS = np.array([[0.15, 0.25], [0.30, 0.25], [0.45, 0.25]])
SLOT_RADIUS = 0.035
FRUIT_RADIUS = 0.03
REST = np.array([0.30, 0.08, 0.20])
MAX_SPEED = 0.30  # m/s, end-effector
GRIPPER_RATE = 5.0  # opening units per second
GRASP_XY, GRASP_Z = 0.025, 0.05  # how close over a fruit a closing gripper must be to grasp it
REST_TOLERANCE = 0.02
SUCCESS_HOLD_STEPS = 10  # at rest with the fruits swapped for this long: done
IMAGE_SIZE = 32
APPLE, ORANGE = 0, 1
FRUIT_COLORS = np.array([[200, 30, 40], [245, 140, 20]], dtype=np.uint8)
TABLE_COLOR = np.array([170, 150, 120], dtype=np.uint8)
SLOT_COLOR = np.array([90, 80, 70], dtype=np.uint8)
FLOOR_COLOR = np.array([60, 60, 70], dtype=np.uint8)
ARM_COLOR = np.array([230, 230, 235], dtype=np.uint8)

# Observation (end-effector state) and action layout: [x, y, z, gripper] both, the action being
# the commanded end-effector target and gripper opening.
STATE_DIM = 4
ACTION_DIM = 4


def swap_moves(slot_of: tuple[int, int]) -> list[tuple[int, int, int]]:
    """The expert's three moves (fruit, from slot, to slot) that swap the fruits through the
    free slot, the apple first."""
    a, o = slot_of
    free = 3 - a - o
    return [(APPLE, a, free), (ORANGE, o, a), (APPLE, free, o)]


@dataclass
class FruitSwapEnv:
    seed: int = 0
    distractor: bool = False
    max_steps: int = 400
    rng: np.random.Generator = field(init=False)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)
        self.reset()

    def reset(self) -> dict:
        a, o = self.rng.choice(3, size=2, replace=False)
        self.start_slots = (int(a), int(o))
        self.fruit_pos = np.zeros((2, 3))
        self.fruit_pos[APPLE, :2] = SLOTS[a]
        self.fruit_pos[ORANGE, :2] = SLOTS[o]
        self.held: int | None = None
        self.ee = REST + self.rng.uniform(-0.01, 0.01, 3)
        self.gripper = 1.0  # open
        self.t = 0
        self.at_rest_steps = 0
        self.occluder = self._random_occluder() if self.distractor else None
        return self.observe()

    @property
    def goal_slots(self) -> tuple[int, int]:
        return self.start_slots[1], self.start_slots[0]

    def slot_contents(self) -> list[int | None]:
        """Which fruit sits in each slot (None: empty or carried/misplaced)."""
        contents: list[int | None] = [None, None, None]
        for fruit in (APPLE, ORANGE):
            if fruit == self.held:
                continue
            d = np.linalg.norm(SLOTS - self.fruit_pos[fruit, :2], axis=1)
            if d.min() < SLOT_RADIUS:
                contents[int(d.argmin())] = fruit
        return contents

    def swapped(self) -> bool:
        contents = self.slot_contents()
        a, o = self.goal_slots
        return contents[a] == APPLE and contents[o] == ORANGE

    def step(self, action) -> tuple[dict, bool, bool]:
        """Apply one commanded [x, y, z, gripper]; returns (observation, success, done)."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action: expected {ACTION_DIM} finite values [x, y, z, gripper], got {action.tolist()}")
        target = np.clip(action[:3], [0.0, 0.0, 0.0], [0.6, 0.5, 0.35])
        delta = target - self.ee
        max_step = MAX_SPEED / CONTROL_HZ
        dist = np.linalg.norm(delta)
        self.ee = self.ee + (delta if dist <= max_step else delta * (max_step / dist))
        g = float(np.clip(action[3], 0.0, 1.0))
        self.gripper += float(np.clip(g - self.gripper, -GRIPPER_RATE / CONTROL_HZ, GRIPPER_RATE / CONTROL_HZ))
        self._grasp_or_release()
        if self.held is not None:
            self.fruit_pos[self.held] = self.ee - [0.0, 0.0, FRUIT_RADIUS]
        self.t += 1
        at_rest = np.linalg.norm(self.ee - REST) < REST_TOLERANCE and self.gripper > 0.5 and self.held is None
        self.at_rest_steps = self.at_rest_steps + 1 if at_rest and self.swapped() else 0
        success = self.at_rest_steps >= SUCCESS_HOLD_STEPS
        return self.observe(), success, success or self.t >= self.max_steps

    def _grasp_or_release(self) -> None:
        closed = self.gripper < 0.5
        if closed and self.held is None:
            for fruit in (APPLE, ORANGE):
                over = np.linalg.norm(self.fruit_pos[fruit, :2] - self.ee[:2]) < GRASP_XY
                if over and self.ee[2] - self.fruit_pos[fruit, 2] < GRASP_Z:
                    self.held = fruit
                    break
        elif not closed and self.held is not None:
            fruit, self.held = self.held, None
            d = np.linalg.norm(SLOTS - self.ee[:2], axis=1)
            land = SLOTS[d.argmin()] if d.min() < SLOT_RADIUS else self.ee[:2]
            self.fruit_pos[fruit] = [land[0], land[1], 0.0]

    def state(self) -> np.ndarray:
        return np.array([*self.ee, self.gripper])

    def observe(self) -> dict:
        return {"state": self.state(), "front": self.render_front(), "wrist": self.render_wrist()}

    # --- cameras -------------------------------------------------------------------------

    def _random_occluder(self) -> tuple[np.ndarray, np.ndarray]:
        lo = self.rng.integers(4, 22, 2)
        size = self.rng.integers(5, 10, 2)
        color = self.rng.integers(0, 256, 3).astype(np.uint8)
        return np.array([lo, lo + size]), color

    def render_front(self) -> np.ndarray:
        """Oblique view from the front: column ← x, row ← depth y and height z (objects higher
        up or further away appear higher in the image); nearer objects look bigger."""
        img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        img[:] = FLOOR_COLOR
        img[8:, :] = TABLE_COLOR

        # Framed on the slots (x 0.05..0.55 m): each fruit spans ~8 of the 32 columns.
        def project(p):
            col = (p[0] - 0.05) / 0.5 * IMAGE_SIZE
            row = 34.0 - p[1] * 56.0 - p[2] * 70.0
            scale = 1.25 - p[1]
            return row, col, scale

        rows, cols = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5
        for s in SLOTS:
            r, c, k = project([s[0], s[1], 0.0])
            _ellipse(img, rows, cols, r, c, 3.0 * k, 4.5 * k, SLOT_COLOR)
        # Painter's order: far to near.
        things = [(self.fruit_pos[f], FRUIT_COLORS[f], 4.0) for f in (APPLE, ORANGE)]
        things.append((self.ee, ARM_COLOR if self.gripper > 0.5 else ARM_COLOR // 2, 2.5))
        for p, color, radius in sorted(things, key=lambda t: -t[0][1]):
            r, c, k = project(p)
            _ellipse(img, rows, cols, r, c, radius * k, radius * k, color)
        if self.occluder is not None:
            (r0, c0), (r1, c1) = self.occluder[0]
            img[r0:r1, c0:c1] = self.occluder[1]
        return img

    def render_wrist(self) -> np.ndarray:
        """Looking straight down from the end-effector; the field of view grows with height.
        The gripper's fingers show at the image edges, closer together when closed."""
        img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        img[:] = TABLE_COLOR
        height = max(self.ee[2], 0.02) + 0.05
        metres_per_pixel = height * 1.0 / IMAGE_SIZE
        rows, cols = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5
        centre = IMAGE_SIZE / 2

        def to_pixels(xy):
            return centre - (xy[1] - self.ee[1]) / metres_per_pixel, centre + (xy[0] - self.ee[0]) / metres_per_pixel

        for s in SLOTS:
            r, c = to_pixels(s)
            radius = SLOT_RADIUS / metres_per_pixel
            _ellipse(img, rows, cols, r, c, radius, radius, SLOT_COLOR)
        for f in (APPLE, ORANGE):
            r, c = to_pixels(self.fruit_pos[f])
            radius = FRUIT_RADIUS / metres_per_pixel * (1.0 if f != self.held else 1.3)
            _ellipse(img, rows, cols, r, c, radius, radius, FRUIT_COLORS[f])
        gap = int(round(2 + 10 * self.gripper))
        img[-6:, max(0, int(centre) - gap - 3):int(centre) - gap] = ARM_COLOR
        img[-6:, int(centre) + gap:int(centre) + gap + 3] = ARM_COLOR
        return img


def _ellipse(img, rows, cols, r, c, half_height, half_width, color) -> None:
    img[((rows - r) / half_height) ** 2 + ((cols - c) / half_width) ** 2 <= 1.0] = color


@dataclass
class ScriptedExpert:
    """Pick and place through waypoints with human-like variation: speed, grasp offsets,
    carrying height and pauses are drawn per episode. Deterministic given its seed."""

    seed: int = 0

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)

    def plan(self, env: FruitSwapEnv) -> list[tuple[np.ndarray, float, int]]:
        """Waypoints (end-effector target, gripper, pause steps) for the whole episode."""
        carry_z = self.rng.uniform(0.10, 0.15)
        waypoints = []
        for fruit, src, dst in swap_moves(env.start_slots):
            pick = SLOTS[src] + self.rng.normal(0.0, 0.004, 2)
            place = SLOTS[dst] + self.rng.normal(0.0, 0.004, 2)
            grasp_z = self.rng.uniform(0.025, 0.04)
            waypoints += [
                (np.array([*pick, carry_z]), 1.0, 0),
                (np.array([*pick, grasp_z]), 1.0, 0),
                (np.array([*pick, grasp_z]), 0.0, int(self.rng.integers(2, 5))),
                (np.array([*pick, carry_z]), 0.0, 0),
                (np.array([*place, carry_z]), 0.0, 0),
                (np.array([*place, grasp_z + 0.01]), 0.0, 0),
                (np.array([*place, grasp_z + 0.01]), 1.0, int(self.rng.integers(2, 5))),
                (np.array([*place, carry_z]), 1.0, 0),
            ]
        waypoints.append((REST.copy(), 1.0, SUCCESS_HOLD_STEPS + 5))
        return waypoints

    def actions(self, env: FruitSwapEnv):
        """Yield one action per control step until the plan is done: the target moves toward
        each waypoint at this episode's speed (a fraction of the arm's maximum)."""
        speed = self.rng.uniform(0.6, 0.95) * MAX_SPEED / CONTROL_HZ
        target = env.ee.copy()
        for point, grip, pause in self.plan(env):
            while np.linalg.norm(point - target) > 1e-9:
                delta = point - target
                d = np.linalg.norm(delta)
                target = point.copy() if d <= speed else target + delta * (speed / d)
                yield np.array([*target, grip])
            for _ in range(pause + 1):
                yield np.array([*target, grip])


def run_expert(seed: int, distractor: bool = False) -> dict:
    """One expert episode: per step the observation before the action and the action, plus the
    outcome. Arrays: state [T, 4], front/wrist [T, 32, 32, 3] uint8, action [T, 4]."""
    env = FruitSwapEnv(seed=seed, distractor=distractor)
    expert = ScriptedExpert(seed=seed + 1_000_003)
    obs = env.observe()
    states, fronts, wrists, actions = [], [], [], []
    success = False
    for action in expert.actions(env):
        states.append(obs["state"])
        fronts.append(obs["front"])
        wrists.append(obs["wrist"])
        actions.append(action)
        obs, success, done = env.step(action)
        if done:
            break
    return {"state": np.array(states), "front": np.array(fronts), "wrist": np.array(wrists),
            "action": np.array(actions), "success": success, "start_slots": env.start_slots, "steps": env.t}
