"""Writes the replay fixtures in tests/fixtures/bags/ (run from the repository root:
python onnx/tests/make_bags.py). A point-mass episode recorded as a real arm would record it:
joint states, camera images and the commanded action, in MCAP and in sqlite3; plus bags with
every kind of damage the replay must report rather than crash on; and the clean episode with
goal poses sent to the node during it (config/pointmass_goals.yaml replays it).
"""

from pathlib import Path
import shutil

import numpy as np

from df_train.datagen import pointmass
from df_train.rosbag_io import T, Record, float64_array, header, image, joint_state, write_bag

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "bags"
T0 = 1_700_000_000_000_000_000
STEP = 100_000_000  # 10 Hz, the point mass's dt
SIZE = 32


def render(position) -> np.ndarray:
    """A 32x32 view of the arena [-2, 2]^2 with the point as a red dot."""
    img = np.full((SIZE, SIZE, 3), 255, dtype=np.uint8)
    col, row = ((np.asarray(position) + 2) / 4 * (SIZE - 1)).round().astype(int)
    img[max(row - 1, 0): row + 2, max(col - 1, 0): col + 2] = (220, 30, 30)
    return img


def episode_records(steps: int = 60, seed: int = 3) -> list[Record]:
    observations, actions, _ = pointmass.episode(np.random.default_rng(seed), steps)
    records = []
    for i, (obs, act) in enumerate(zip(observations, actions)):
        t = T0 + i * STEP
        records.append(Record("/joint_states", t, joint_state(t, obs[:2], obs[2:])))
        records.append(Record("/camera/image_raw", t + 5_000_000, image(t + 5_000_000, render(obs[:2]))))
        records.append(Record("/action", t + 10_000_000, float64_array(act)))
    return records


def faulty_records() -> list[Record]:
    """The clean episode with damage: bad encodings and sizes, out-of-order and duplicate
    stamps, a 1 s gap in the joint states, and a malformed action."""
    records = episode_records()
    out = []
    for r in records:
        t = r.log_time_ns
        k = (t - T0) // STEP
        if r.topic == "/camera/image_raw" and k == 10:
            r = Record(r.topic, t, image(t, render((0, 0))[..., 0], encoding="yuv422"))
        elif r.topic == "/camera/image_raw" and k == 11:
            r = Record(r.topic, t, image(t, np.zeros((16, 16, 3), np.uint8)))
        elif r.topic == "/camera/image_raw" and k == 12:
            r = Record(r.topic, t, image(t - 5 * STEP, render((0, 0))))  # stamp out of order
        elif r.topic == "/camera/image_raw" and k == 13:
            out.append(r)
            r = Record(r.topic, t + 1, r.msg)  # same header stamp again
        elif r.topic == "/camera/image_raw" and k == 14:
            r = Record(r.topic, t, image(t, render((0, 0))[..., ::-1].copy(), encoding="bgr8"))
        elif r.topic == "/joint_states" and 30 <= k < 40:
            continue  # the robot state stops for a second
        elif r.topic == "/joint_states" and k == 41:
            out.append(r)
            r = Record(r.topic, t + 1, r.msg)  # duplicate stamp
        elif r.topic == "/action" and k == 20:
            r = Record(r.topic, t, float64_array([1.0, 2.0, 3.0]))
        out.append(r)
    return out


def goal_pose(ns: int, x: float, y: float, frame_id: str):
    position = T["geometry_msgs/msg/Point"](x=x, y=y, z=0.0)
    orientation = T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)
    pose = T["geometry_msgs/msg/Pose"](position=position, orientation=orientation)
    return T["geometry_msgs/msg/PoseStamped"](header=header(ns, frame_id), pose=pose)


def goal_records() -> list[Record]:
    """The clean episode with goals on /goal_pose, as an operator would send them: one at 1 s,
    one outside the arena at 2 s, one in another frame at 2.5 s, a second goal at 3 s."""
    goals = [(1.0, 1.0, -1.0, "map"), (2.0, 3.0, 0.0, "map"), (2.5, -1.0, 1.0, "odom"), (3.0, -1.0, 1.0, "map")]
    records = episode_records()
    for at_s, x, y, frame_id in goals:
        t = T0 + int(at_s * 1e9) + 1_000_000
        records.append(Record("/goal_pose", t, goal_pose(t, x, y, frame_id)))
    return sorted(records, key=lambda r: r.log_time_ns)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    write_bag(OUT / "pointmass_mcap", episode_records(), "mcap")
    write_bag(OUT / "pointmass_sqlite3", episode_records(), "sqlite3")
    write_bag(OUT / "faults_mcap", faulty_records(), "mcap")
    write_bag(OUT / "goals_mcap", goal_records(), "mcap")
    # Damaged storage: an MCAP cut short, and a .db3 that is not a database.
    mcap = next((OUT / "pointmass_mcap").glob("*.mcap"))
    data = mcap.read_bytes()
    (OUT / "truncated.mcap").write_bytes(data[: len(data) * 6 // 10])
    (OUT / "corrupt.db3").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    for d in OUT.iterdir():
        if d.is_dir():
            shutil.rmtree(d / "__pycache__", ignore_errors=True)
    print(f"wrote fixtures to {OUT}")


if __name__ == "__main__":
    main()
