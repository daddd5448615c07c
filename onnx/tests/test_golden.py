"""Golden cases written from an exported graph (`python -m df_train.golden`) are the golden
writer's cases: the shipped plain goldens, written from the PyTorch checkpoint, come out again
with ONNX Runtime as the network, and the clip case is the committed one."""

import json
from pathlib import Path

import numpy as np
import pytest

from df_train.golden import TOLERANCE, main

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "onnx/models/pointmass.onnx"
SHIPPED = ROOT / "onnx/golden/pointmass"


def _states_differ_by(a: dict, b: dict) -> float:
    return max(float(np.abs(np.array(x) - np.array(y)).max()) for x, y in zip(a["states"], b["states"], strict=True))


def test_plain_cases_from_the_exported_graph_are_the_checkpoints_and_the_clip_case_is_the_committed_one(tmp_path):
    cases = ["pyramid_plain", "autoregressive_plain", "pyramid_plain_clip"]
    main(["--onnx", str(MODEL), "--out", str(tmp_path), "--only", *cases])
    for name in cases:
        written = json.loads((tmp_path / f"{name}.json").read_text())
        shipped = json.loads((SHIPPED / f"{name}.json").read_text())
        # The same draws (a case's index seeds them), schedule and settings (older goldens
        # lack settings added since, such as context_tokens).
        for key in ("x_init", "noise", "timestep_rows"):
            assert written[key] == shipped[key], (name, key)
        assert {k: written["settings"][k] for k in shipped["settings"]} == shipped["settings"], name
        assert _states_differ_by(written, shipped) < TOLERANCE / 10, name


def test_unknown_or_guided_cases_and_missing_models_are_refused(tmp_path, capsys):
    for args, message in [
        (["--onnx", str(MODEL), "--only", "pyramid_plain_clipped"], "--only: no such case ['pyramid_plain_clipped']"),
        (["--onnx", str(MODEL), "--only", "pyramid_guided"], "--only: ['pyramid_guided'] are guided cases"),
        (["--onnx", str(tmp_path / "nope.onnx"), "--only", "pyramid_plain"], "nope.onnx: no such file"),
    ]:
        with pytest.raises(SystemExit):
            main([*args, "--out", str(tmp_path)])
        assert message in capsys.readouterr().err
