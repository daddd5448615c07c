"""Writes the small ONNX models the Rust bad-input tests load (tests/fixtures/models/).

Run from the repository root: python onnx/tests/make_bad_models.py. Plain onnx.helper graphs,
no torch: each one is valid ONNX that breaks exactly one part of the contract.
"""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from df_train import CONTRACT_VERSION
from df_train.export import METADATA_KEY
from df_train.schedule import alphas_cumprod

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "models"
TOKEN_DIM = 12


def contract(name: str, vjp: bool = False) -> dict:
    return {
        "contract_version": CONTRACT_VERSION,
        "graphs": {"denoise": f"{name}.onnx", "denoise_vjp": f"{name}.vjp.onnx" if vjp else None},
        "layout": {"observation_dim": 4, "action_dim": 2, "frame_stack": 2, "reward": False,
                   "field_order": ["action", "observation"], "frame_dim": 6, "token_dim": TOKEN_DIM},
        "normalization": {"mean": [0.0] * 6, "std": [1.0] * 6},
        "diffusion": {"timesteps": 10, "schedule": "cosine", "alphas_cumprod": alphas_cumprod("cosine", 10).tolist(),
                      "parameterization": "x0", "stabilization_level": 1, "noise_clip": 6.0},
        "max_tokens": 4,
        "causal": True,
        "cond_dim": 0,
        "provenance": {"dataset_sha256": "none", "train_steps": 0, "git_commit": "none",
                       "exported_at": "fixture", "torch": "none"},
    }


def graph(dim: int = TOKEN_DIM, scale: float = 0.5, input_names=("x_t", "k"), tokens="T") -> onnx.ModelProto:
    """x0 = scale * x_t, eps = x_t: a stand-in denoiser with the contract's ports (`tokens`: the
    token axis, named for a dynamic one or a number for a fixed one)."""
    x, k = input_names
    nodes = [
        helper.make_node("Mul", [x, "scale"], ["x0"]),
        helper.make_node("Identity", [x], ["eps"]),
    ]
    g = helper.make_graph(
        nodes, "fixture",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["B", tokens, dim]),
         helper.make_tensor_value_info(k, TensorProto.INT64, ["B", tokens])],
        [helper.make_tensor_value_info("x0", TensorProto.FLOAT, ["B", tokens, dim]),
         helper.make_tensor_value_info("eps", TensorProto.FLOAT, ["B", tokens, dim])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def save(model: onnx.ModelProto, name: str, meta) -> None:
    if meta is not None:
        model.metadata_props.add(key=METADATA_KEY, value=meta if isinstance(meta, str) else json.dumps(meta))
    onnx.checker.check_model(model)
    onnx.save(model, str(OUT / f"{name}.onnx"))


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    save(graph(), "stand_in", contract("stand_in"))
    save(graph(scale=float("nan")), "nan_output", contract("nan_output"))
    save(graph(), "no_metadata", None)
    save(graph(), "malformed_metadata", "{not json")
    save(graph(dim=10), "shape_mismatch", contract("shape_mismatch"))
    save(graph(tokens=4), "fixed_tokens", contract("fixed_tokens"))
    save(graph(input_names=("x", "t")), "wrong_inputs", contract("wrong_inputs"))
    bad = copy.deepcopy(contract("unknown_parameterization"))
    bad["diffusion"]["parameterization"] = "score"
    save(graph(), "unknown_parameterization", bad)
    missing_vjp = contract("missing_vjp", vjp=True)
    save(graph(), "missing_vjp", missing_vjp)
    print(f"wrote fixtures to {OUT}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
