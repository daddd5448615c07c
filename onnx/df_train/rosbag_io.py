"""Writing ROS 2 bags (MCAP or sqlite3) without ROS, through the pure-Python `rosbags`.

Used for the replay fixtures and for recording simulated demonstrations the way a real arm
would record them.
"""

from dataclasses import dataclass
from pathlib import Path
import shutil

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
T = TYPESTORE.types


def stamp(ns: int):
    return T["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def header(ns: int, frame_id: str = ""):
    return T["std_msgs/msg/Header"](stamp=stamp(ns), frame_id=frame_id)


def image(ns: int, pixels: np.ndarray, encoding: str = "rgb8", frame_id: str = "camera"):
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return T["sensor_msgs/msg/Image"](
        header=header(ns, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0,
        step=w * channels, data=np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1),
    )


def joint_state(ns: int, position, velocity, names=None):
    position = np.asarray(position, dtype=np.float64)
    return T["sensor_msgs/msg/JointState"](
        header=header(ns), name=list(names or [f"joint{i}" for i in range(len(position))]),
        position=position, velocity=np.asarray(velocity, dtype=np.float64), effort=np.zeros(0),
    )


def float64_array(values):
    layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return T["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.asarray(values, dtype=np.float64))


@dataclass
class Record:
    topic: str
    log_time_ns: int
    msg: object


def write_bag(path: Path, records: list[Record], storage: str = "mcap") -> Path:
    """A rosbag2 folder at `path` holding `records` (written in the given order)."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    with Writer(path, version=8, storage_plugin=plugin) as writer:
        connections = {}
        for r in records:
            msgtype = r.msg.__msgtype__
            if r.topic not in connections:
                connections[r.topic] = writer.add_connection(r.topic, msgtype, typestore=TYPESTORE)
            writer.write(connections[r.topic], r.log_time_ns, TYPESTORE.serialize_cdr(r.msg, msgtype))
    return path
