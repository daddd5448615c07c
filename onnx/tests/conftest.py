import functools
import subprocess
from pathlib import Path

import pytest

from df_train.data import save_dataset
from df_train.datagen import pointmass
from df_train.train import TrainConfig


ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def planner_binary() -> Path:
    """The debug `df_planner` of this tree, built once per test session (cargo is a no-op when it is
    fresh), so no test runs an older binary than the sources."""
    subprocess.run(["cargo", "build", "--quiet"], cwd=ROOT, check=True)
    return ROOT / "target" / "debug" / "df_planner"


def tiny_config(tmp: Path, **overrides) -> TrainConfig:
    data = tmp / "data.npz"
    if not data.exists():
        save_dataset(data, pointmass.generate(12, 40, seed=1), {"generator": "pointmass", "seed": 1})
    cfg = dict(data=str(data), out=str(tmp / "run"), observation_dim=4, action_dim=2, frame_stack=2, tokens=6,
               width=32, depth=1, heads=2, timesteps=100, stabilization_level=3, steps=20, batch=8,
               checkpoint_every=10, warmup=5, threads=1)
    cfg.update(overrides)
    return TrainConfig(**cfg)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A checkpoint of a tiny model trained for a few steps."""
    from df_train.train import train

    cfg = tiny_config(tmp_path_factory.mktemp("trained"))
    return cfg, train(cfg, progress=False)
