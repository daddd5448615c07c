"""D4RL maze2d (maze2d-{umaze,medium,large}-v1) re-implemented on PyPI `mujoco`.

Follows d4rl/pointmaze/maze_model.py and d4rl/pointmaze/__init__.py (Farama-Foundation/D4RL):
the same layouts and MJCF (walls as 1x1 boxes, a ball of radius 0.1 on two slide joints, motors
with gear 100 and ctrl in [-1, 1], Euler at dt 0.01, frame_skip 1), velocity clipped to [-5, 5]
before each step, the sparse reward (|xy - goal| <= 0.5) and the gym time limits.

Coordinates are D4RL's: an observation is (qpos x, qpos y, qvel x, qvel y), and layout cell (i, j)
(row i, column j of the layout) is the point (i, j). D4RL puts the ball's body at world
(1.2, 1.2) + qpos but the box of cell (i, j) at world (i + 1, j + 1), so in qpos coordinates cell
(i, j) covers [i - 0.7, i + 0.3] x [j - 0.7, j + 0.3]: the point (i, j) is 0.2 off the cell's
centre, and in an open row the ball's centre ranges over [i - 0.6, i + 0.2]. The quirk is kept so
that positions, goals and scores match D4RL's.
"""

import itertools

import mujoco
import numpy as np

LAYOUTS = {  # U_MAZE, MEDIUM_MAZE, LARGE_MAZE of maze_model.py; 'G' is the evaluation goal
    "umaze": ("#####",
              "#GOO#",
              "###O#",
              "#OOO#",
              "#####"),
    "medium": ("########",
               "#OO##OO#",
               "#OO#OOO#",
               "##OOO###",
               "#OO#OOO#",
               "#O#OO#O#",
               "#OOO#OG#",
               "########"),
    "large": ("############",
              "#OOOO#OOOOO#",
              "#O##O#O#O#O#",
              "#OOOOOO#OOO#",
              "#O####O###O#",
              "#OO#O#OOOOO#",
              "##O#O#O#O###",
              "#OO#OOO#OGO#",
              "############"),
}
MAZES = tuple(LAYOUTS)
MAX_EPISODE_STEPS = {"umaze": 300, "medium": 600, "large": 800}  # max_episode_steps of the -v1 tasks
# REF_MIN_SCORE / REF_MAX_SCORE of maze2d-{umaze,medium,large}-v1 in d4rl/infos.py (D4RL).
REF_SCORES = {"umaze": (23.85, 161.86), "medium": (13.13, 277.39), "large": (6.7, 273.99)}
GOAL_RADIUS = 0.5
CELL_SHIFT = 0.2  # the centre of cell (i, j) is at qpos (i - 0.2, j - 0.2); see the module doc
POINT_NOISE = 0.1  # D4RL's uniform noise around a cell's point for resets and random targets
OBS_DIM = 4
ACTION_DIM = 2


def wall_grid(maze: str) -> np.ndarray:
    """The layout as a bool grid [rows, cols], True on walls."""
    return np.array([[c == "#" for c in row] for row in LAYOUTS[maze]])


def empty_cells(maze: str) -> list[tuple[int, int]]:
    """Every cell the ball can be in (the goal cell included), row-major."""
    return [(int(i), int(j)) for i, j in np.argwhere(~wall_grid(maze))]


def _cells_box(first, last) -> list[list[float]]:
    """[[x_min, y_min], [x_max, y_max]] spanning the squares of cells `first` to `last`."""
    low = np.asarray(first) - 0.5 - CELL_SHIFT
    high = np.asarray(last) + 0.5 - CELL_SHIFT
    return [np.round(low, 6).tolist(), np.round(high, 6).tolist()]


def free_bounds(maze: str) -> list[list[float]]:
    """[[x_min, y_min], [x_max, y_max]] around the maze's open cells: the `serve.goal_bounds`
    of its node config (config/maze2d_<maze>.yaml)."""
    cells = np.array(empty_cells(maze))
    return _cells_box(cells.min(axis=0), cells.max(axis=0))


def wall_blocks(maze: str) -> list[list[list[float]]]:
    """The wall blocks inside the maze's open bounds as boxes [[x_min, y_min], [x_max, y_max]],
    a row's adjacent blocks merged: the `serve.goal_keepout` of its node config."""
    inner = wall_grid(maze)[1:-1, 1:-1]
    boxes = []
    for i, row in enumerate(inner, start=1):
        j = 1
        for is_wall, run in itertools.groupby(row):
            n = len(list(run))
            if is_wall:
                boxes.append(_cells_box((i, j), (i, j + n - 1)))
            j += n
    return boxes


def goal_cell(maze: str) -> tuple[int, int]:
    (i, j), = [(i, j) for i, row in enumerate(LAYOUTS[maze]) for j, c in enumerate(row) if c == "G"]
    return i, j


def cell_to_xy(cell) -> np.ndarray:
    return np.asarray(cell, dtype=np.float64)


def goal_xy(maze: str) -> np.ndarray:
    """The fixed evaluation target of maze2d-{maze}-v1: exactly the 'G' cell's point, no noise."""
    return cell_to_xy(goal_cell(maze))


def goal_regions(maze: str, multi_goal: bool) -> list[list[list[float]]]:
    """Boxes [[x_min, y_min], [x_max, y_max]] that hold every goal an episode can set: the fixed
    goal point, or (Multi2D) each open cell's point with its noise."""
    if not multi_goal:
        return [[goal_xy(maze).tolist()] * 2]
    return [[(cell_to_xy(c) - POINT_NOISE).round(6).tolist(), (cell_to_xy(c) + POINT_NOISE).round(6).tolist()]
            for c in empty_cells(maze)]


def xy_to_cell(xy) -> tuple[int, int]:
    """The cell whose square contains the point (not D4RL's round(), which is off by the 0.2 shift)."""
    i, j = np.floor(np.asarray(xy, dtype=np.float64) + 0.5 + CELL_SHIFT).astype(int)
    return int(i), int(j)


def route_length(maze: str, a_xy, b_xy) -> int:
    """Cells moved on a shortest route (up, down, left, right) from the cell holding a to the one
    holding b: how far apart two points are for a ball that must keep to the corridors."""
    walls = wall_grid(maze)
    start, target = xy_to_cell(a_xy), xy_to_cell(b_xy)
    steps, frontier = {start: 0}, [start]
    while frontier and target not in steps:
        nearer, frontier = frontier, []
        for i, j in nearer:
            for cell in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                if cell not in steps and not walls[cell]:
                    steps[cell] = steps[(i, j)] + 1
                    frontier.append(cell)
    if target not in steps:
        raise ValueError(f"no route in maze {maze} from cell {start} to cell {target}")
    return steps[target]


def _neighbour_squares(maze: str, xy):
    """For points xy [..., 2], the 3 x 3 cells around each point's cell: whether each is wall
    (outside the layout counts as wall) and the point's distance to its square, each [9, ...]."""
    walls = np.pad(wall_grid(maze), 1, constant_values=True)
    p = np.asarray(xy, dtype=np.float64)
    base = np.floor(p + 0.5 + CELL_SHIFT).astype(np.int64)
    is_wall, gaps = [], []
    for offset in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)):
        cell = base + offset
        idx = np.clip(cell + 1, 0, np.array(walls.shape) - 1)
        low = cell - 0.5 - CELL_SHIFT
        is_wall.append(walls[idx[..., 0], idx[..., 1]])
        gaps.append(np.linalg.norm(np.maximum(np.maximum(low - p, p - low - 1.0), 0.0), axis=-1))
    return np.stack(is_wall), np.stack(gaps)


def in_free_space(maze: str, xy, margin: float = 0.0):
    """Whether points xy [..., 2] are inside the maze and farther than `margin` (< 0.5) from every wall.

    With margin=0.1 (the ball's radius) this is where the ball's centre can be.
    """
    is_wall, gaps = _neighbour_squares(maze, xy)
    free = np.all(~is_wall | (gaps > margin), axis=0)
    return free if free.ndim else bool(free)


def wall_depth(maze: str, xy) -> np.ndarray:
    """How far points xy [..., 2] are inside walls: the distance to the nearest open square, 0 in
    one. Only the point's cell and its neighbours are searched; every other square is at least
    1 away, so a value below 1 is exact, and inf (no open neighbour) means at least 1."""
    is_wall, gaps = _neighbour_squares(maze, xy)
    return np.where(is_wall, np.inf, gaps).min(axis=0)


def normalized_score(maze: str, total_reward: float) -> float:
    """D4RL's normalized score: 0 at the random policy's return, 100 at the expert's."""
    low, high = REF_SCORES[maze]
    return 100.0 * (total_reward - low) / (high - low)


def mjcf(maze: str) -> str:
    """The MJCF of maze_model.point_maze (visual-only assets left out; they do not affect dynamics)."""
    walls = "\n    ".join(f'<geom type="box" pos="{i + 1} {j + 1} 0" size="0.5 0.5 0.2"/>'
                          for i, j in np.argwhere(wall_grid(maze)))
    return f"""<mujoco model="point_maze">
  <compiler inertiafromgeom="true" angle="radian"/>
  <option timestep="0.01" gravity="0 0 0" iterations="20" integrator="Euler"/>
  <default>
    <joint damping="1" limited="false"/>
    <geom friction=".5 .1 .1" density="1000" margin="0.002" condim="1" contype="2" conaffinity="1"/>
  </default>
  <worldbody>
    <geom name="ground" type="plane" size="40 40 0.25" pos="0 0 -0.1" contype="1" conaffinity="0"/>
    <body name="particle" pos="1.2 1.2 0">
      <geom name="particle_geom" type="sphere" size="0.1" contype="1"/>
      <joint name="ball_x" type="slide" pos="0 0 0" axis="1 0 0"/>
      <joint name="ball_y" type="slide" pos="0 0 0" axis="0 1 0"/>
    </body>
    {walls}
  </worldbody>
  <actuator>
    <motor joint="ball_x" ctrlrange="-1 1" ctrllimited="true" gear="100"/>
    <motor joint="ball_y" ctrlrange="-1 1" ctrllimited="true" gear="100"/>
  </actuator>
</mujoco>
"""


class Maze2DEnv:
    """maze2d-{maze}-v1 with the sparse reward; multi_goal draws a new goal every episode (Multi2D).

    `seed` may be an int or a numpy Generator (which is then shared, not copied).
    """

    def __init__(self, maze: str, seed=0, multi_goal: bool = False):
        self.maze = maze
        self.model = mujoco.MjModel.from_xml_string(mjcf(maze))
        self.data = mujoco.MjData(self.model)
        self.rng = np.random.default_rng(seed)
        self.multi_goal = multi_goal
        self.max_episode_steps = MAX_EPISODE_STEPS[maze]
        self.cells = np.array(empty_cells(maze), dtype=np.float64)
        self.goal = goal_xy(maze)
        self.t = 0

    def random_point(self) -> np.ndarray:
        """A random empty cell plus U(-0.1, 0.1) noise: D4RL's reset position and set_target()."""
        return self.cells[self.rng.integers(len(self.cells))] + self.rng.uniform(-POINT_NOISE, POINT_NOISE, 2)

    def reset(self, cell=None) -> np.ndarray:
        """Start at a random empty cell (or `cell`, like D4RL's reset_to_location) with qvel ~ N(0, 0.1)."""
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = self.random_point() if cell is None else cell_to_xy(cell) + self.rng.uniform(-POINT_NOISE, POINT_NOISE, 2)
        self.data.qvel[:] = self.rng.normal(0.0, 0.1, 2)
        if self.multi_goal:
            self.goal = self.random_point()
        self.t = 0
        return self.observation()

    def observation(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel])

    def step(self, action) -> tuple[np.ndarray, float, bool]:
        """(observation, sparse reward of the new position, whether the time limit is reached)."""
        d = self.data
        d.ctrl[:] = np.clip(action, -1.0, 1.0)
        d.qvel[:] = np.clip(d.qvel, -5.0, 5.0)
        mujoco.mj_step(self.model, d)
        self.t += 1
        obs = self.observation()
        reward = float(np.hypot(obs[0] - self.goal[0], obs[1] - self.goal[1]) <= GOAL_RADIUS)
        return obs, reward, self.t >= self.max_episode_steps
