"""`df-train datagen fruit-swap`: scripted expert demonstrations of the fruit swap, recorded
as ROS 2 bags with the topics a real arm records, and read back the way the trainer reads
them.

One rosbag2 folder per episode (MCAP by default, sqlite3 on request), all messages of a
control step stamped with that step's time (10 Hz):

| topic | type | content |
|---|---|---|
| `/camera/front/image_raw` | `sensor_msgs/Image` | front camera, rgb8 32×32 |
| `/camera/wrist/image_raw` | `sensor_msgs/Image` | wrist camera, rgb8 32×32 |
| `/ee_state` | `sensor_msgs/JointState` | names ee_x, ee_y, ee_z, gripper: position and velocity |
| `/commanded_action` | `std_msgs/Float64MultiArray` | the expert's command [x, y, z, gripper] |
"""

import hashlib
import json
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader

from .. import rosbag_io
from ..envs.fruit_swap import ACTION_DIM, CONTROL_HZ, IMAGE_SIZE, run_expert

TOPICS = {
    "front": "/camera/front/image_raw",
    "wrist": "/camera/wrist/image_raw",
    "state": "/ee_state",
    "action": "/commanded_action",
}
STATE_NAMES = ["ee_x", "ee_y", "ee_z", "gripper"]
STEP_NS = int(1e9 / CONTROL_HZ)
# Bag time starts here (a plausible wall-clock stamp, as a real recording has).
T0_NS = 1_764_000_000 * 1_000_000_000


def episode_records(episode: dict) -> list[rosbag_io.Record]:
    records = []
    previous = episode["state"][0]
    for k, state in enumerate(episode["state"]):
        ns = T0_NS + k * STEP_NS
        velocity = (state - previous) * CONTROL_HZ
        previous = state
        records += [
            rosbag_io.Record(TOPICS["front"], ns, rosbag_io.image(ns, episode["front"][k], frame_id="front_camera")),
            rosbag_io.Record(TOPICS["wrist"], ns, rosbag_io.image(ns, episode["wrist"][k], frame_id="wrist_camera")),
            rosbag_io.Record(TOPICS["state"], ns, rosbag_io.joint_state(ns, state, velocity, STATE_NAMES)),
            rosbag_io.Record(TOPICS["action"], ns, rosbag_io.float64_array(episode["action"][k])),
        ]
    return records


def _bag_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.name != "metadata.yaml":  # holds the writer's own timestamps
            h.update(f.read_bytes())
    return h.hexdigest()


def listed_bags(folder: Path) -> list[Path]:
    """The bags manifest.json lists, each checked against its recorded digest; a bag folder
    there that the manifest does not list is refused (training on it would change the data
    under the manifest's hash, which the checkpoint and the exported contract name)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    listing = manifest.get("bags") or []
    if not listing:
        raise ValueError(f"{folder}/manifest.json: bags: expected the listed demonstration bags, got none")
    listed = {entry["bag"] for entry in listing}
    unlisted = sorted(p.name for p in folder.iterdir() if (p / "metadata.yaml").exists() and p.name not in listed)
    if unlisted:
        raise ValueError(f"{folder}: bag folders {unlisted} are not in manifest.json (left by an earlier datagen?): "
                         "remove them, or generate into an empty folder")
    bags = []
    for entry in listing:
        bag = folder / entry["bag"]
        if not (bag / "metadata.yaml").exists():
            raise ValueError(f"{folder}/manifest.json: bag {entry['bag']!r}: no such rosbag2 folder")
        if _bag_digest(bag) != entry["sha256"]:
            raise ValueError(f"{bag}: its files no longer match manifest.json's sha256 {entry['sha256'][:12]}…")
        bags.append(bag)
    return bags


def generate(out: Path, episodes: int, seed: int, storage: str = "mcap", distractor: bool = False) -> dict:
    """Write `episodes` expert bags under `out` (episode i has seed `seed + i`) and a
    manifest.json beside them; returns the manifest. Refuses a folder holding other bags."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = {f"episode_{i:04d}" for i in range(episodes)}
    others = sorted(p.name for p in out.iterdir() if (p / "metadata.yaml").exists() and p.name not in names)
    if others:
        raise ValueError(f"out: {out} holds bag folders this run would not rewrite ({others[:3]}{'…' if len(others) > 3 else ''}): "
                         "generate into an empty folder")
    listing = []
    for i in range(episodes):
        episode = run_expert(seed + i, distractor=distractor)
        folder = rosbag_io.write_bag(out / f"episode_{i:04d}", episode_records(episode), storage=storage)
        listing.append({"bag": folder.name, "seed": seed + i, "steps": len(episode["action"]),
                        "success": bool(episode["success"]), "start_slots": list(episode["start_slots"]),
                        "sha256": _bag_digest(folder)})
    manifest = {"generator": "fruit_swap", "episodes": episodes, "seed": seed, "storage": storage,
                "distractor": distractor, "control_hz": CONTROL_HZ, "topics": TOPICS,
                "state_names": STATE_NAMES, "observation_dim": len(STATE_NAMES), "action_dim": ACTION_DIM,
                "success_rate": float(np.mean([e["success"] for e in listing])),
                "steps": int(sum(e["steps"] for e in listing)), "bags": listing}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def camera_image(msg, where: str) -> np.ndarray:
    """An rgb8 sensor_msgs/Image as [IMAGE_SIZE, IMAGE_SIZE, 3] uint8, rows read by `step` (a
    driver may pad them), as the node's frame ring reads it; another size is resized as the
    node's `camera.resize: area` does (config/fruit_swap.yaml), so that training sees what the
    node will."""
    if msg.width == 0 or msg.height == 0:
        raise ValueError(f"{where}: an empty {msg.width}x{msg.height} image")
    row = 3 * msg.width
    if msg.step < row or len(msg.data) != msg.step * msg.height:
        raise ValueError(f"{where}: step {msg.step} and {len(msg.data)} data bytes, expected step >= {row} "
                         f"and step x height = {msg.step * msg.height} bytes")
    rows = np.asarray(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    pixels = rows[:, :row].reshape(msg.height, msg.width, 3)
    if (msg.width, msg.height) == (IMAGE_SIZE, IMAGE_SIZE):
        return pixels
    return area_resize(pixels, IMAGE_SIZE, IMAGE_SIZE)


def area_resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """The node's `Resize::Area` (src/frames/decode.rs; tests/fixtures/area_resize_70x45_to_32.bin
    holds its output on a shared pattern): the centred crop of the output's aspect ratio, each
    output pixel the mean of its box of input pixels (at least one), rounded half up."""
    sh, sw = pixels.shape[:2]
    # Wider than the output: crop the sides; taller: crop top and bottom.
    if sw * height > sh * width:
        cw, ch = max(sh * width // height, 1), sh
    else:
        cw, ch = sw, max(sw * height // width, 1)
    x_off, y_off = (sw - cw) // 2, (sh - ch) // 2

    def span(i: int, crop: int, out: int, offset: int) -> slice:
        start = offset + i * crop // out
        return slice(start, max(offset + (i + 1) * crop // out, start + 1))

    out = np.empty((height, width, 3), dtype=np.uint8)
    for oy in range(height):
        rows = span(oy, ch, height, y_off)
        for ox in range(width):
            box = pixels[rows, span(ox, cw, width, x_off)].astype(np.uint64)
            n = box.shape[0] * box.shape[1]
            out[oy, ox] = (box.sum(axis=(0, 1)) + n // 2) // n
    return out


def read_demo_bag(folder: Path) -> dict:
    """A demonstration bag as arrays, one row per control step: state [T, 4], front and wrist
    [T, 32, 32, 3] uint8, action [T, 4], stamp_ns [T]. Steps missing any topic are dropped and
    counted (a truncated recording loses its tail, not the episode)."""
    steps: dict[int, dict] = {}
    roles = {topic: role for role, topic in TOPICS.items()}
    with Reader(folder) as reader:
        connections = [c for c in reader.connections if c.topic in roles]
        missing = set(TOPICS.values()) - {c.topic for c in connections}
        if missing:
            raise ValueError(f"{folder}: topics {sorted(missing)} missing; a fruit-swap demonstration has {sorted(TOPICS.values())}")
        for connection, log_ns, raw in reader.messages(connections=connections):
            msg = rosbag_io.TYPESTORE.deserialize_cdr(raw, connection.msgtype)
            role = roles[connection.topic]
            if role in ("front", "wrist"):
                if msg.encoding != "rgb8":
                    raise ValueError(f"{folder}: {connection.topic}: encoding {msg.encoding!r}, expected 'rgb8'")
                ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                value = camera_image(msg, f"{folder}: {connection.topic}")
            elif role == "state":
                ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                if list(msg.name) != STATE_NAMES:
                    raise ValueError(f"{folder}: {connection.topic}: joint names {list(msg.name)}, expected {STATE_NAMES}")
                value = np.asarray(msg.position, dtype=np.float64)
            else:  # Float64MultiArray has no header: the log time is the command's time.
                ns = log_ns
                value = np.asarray(msg.data, dtype=np.float64)
            steps.setdefault(ns, {})[role] = value
    complete = [ns for ns in sorted(steps) if len(steps[ns]) == len(TOPICS)]
    return {
        "stamp_ns": np.array(complete, dtype=np.int64),
        **{role: np.stack([steps[ns][role] for ns in complete]) for role in TOPICS},
        "dropped_steps": len(steps) - len(complete),
    }
