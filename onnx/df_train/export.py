"""Export a trained checkpoint to the two ONNX graphs of the contract (see CONTRACT.md).

- `<name>.onnx`: graph *denoise*, (x_t, k) -> (x0, eps).
- `<name>.vjp.onnx`: graph *denoise_vjp*, (x_t, k, cotangent) -> (x0, eps, grad_x_t), where
  grad_x_t = (d x0 / d x_t)^T cotangent through the network. The backward pass is traced into
  a plain aten graph (make_fx over torch.autograd.grad, symbolic shapes) and that graph is
  exported, because the exporters reject autograd inside forward.
Both files carry the same contract JSON under the metadata key `df_planner.contract`.
"""

import datetime
import json
import time
from pathlib import Path

import onnx
import torch
from torch._decomp import core_aten_decompositions
from torch.fx.experimental.proxy_tensor import make_fx

from . import CONTRACT_VERSION, schedule
from .data import DemoWindows
from .model import DFTransformer, ModelConfig
from .provenance import git_commit
from .train import TrainConfig, build_model, load_checkpoint

METADATA_KEY = "df_planner.contract"


def training_commits(ckpt: dict) -> str:
    """The code that trained a checkpoint: its commit, or each run's with the step it started
    from when a resume ran other code. Checkpoints from before this was recorded say so."""
    runs = ckpt.get("train_commits")
    if not runs:
        return f"unknown (not recorded; exported from {git_commit()})"
    if len({r["commit"] for r in runs}) == 1:
        return runs[0]["commit"]
    return ", ".join(f"{r['commit']} from step {r['step']}" for r in runs)


def load_model(checkpoint: Path) -> tuple[DFTransformer, TrainConfig, dict]:
    """The EMA weights of a checkpoint, in eval mode."""
    ckpt = load_checkpoint(checkpoint)
    cfg = TrainConfig(**ckpt["config"])
    if "model_config" in ckpt:
        model = DFTransformer(ModelConfig(**ckpt["model_config"]), schedule.alphas_cumprod(cfg.schedule, cfg.timesteps))
    else:  # checkpoints from before it was recorded: today's defaults
        model = build_model(cfg)
    model.load_state_dict(ckpt["ema"])
    return model.eval(), cfg, ckpt


def contract(cfg: TrainConfig, ckpt: dict, model: DFTransformer, name: str) -> dict:
    return {
        "contract_version": CONTRACT_VERSION,
        "graphs": {"denoise": f"{name}.onnx", "denoise_vjp": f"{name}.vjp.onnx"},
        "layout": cfg.layout.to_dict(),
        "normalization": ckpt["normalization"],
        "diffusion": {
            "timesteps": cfg.timesteps,
            "schedule": cfg.schedule,
            "alphas_cumprod": [float(a) for a in model.alphas_cumprod.double()],
            "parameterization": cfg.parameterization,
            "stabilization_level": cfg.stabilization_level,
            "noise_clip": cfg.noise_clip,
        },
        "max_tokens": cfg.tokens,
        "causal": model.cfg.causal,
        "cond_dim": 0,
        **camera_contract(ckpt, model),
        "provenance": {
            "dataset_sha256": ckpt["dataset_sha256"],
            "train_steps": ckpt["step"],
            "git_commit": training_commits(ckpt),
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
        },
    }


def camera_contract(ckpt: dict, model: DFTransformer) -> dict:
    """Contract 1.1: what a camera model's extra inputs are, so the node can check its frames.
    `images` f32 [B, T, cameras, height, width, 3] in [0, 1] (RGB, the cameras in this order,
    each token with the frames of its last observation) and `image_level` i64 [B, T]."""
    if not model.cfg.cameras:
        return {}
    # As the run trained; checkpoints from before it was recorded: today's code.
    recorded = ckpt.get("camera_inputs")
    if recorded is None:
        from .datagen.fruit_swap import TOPICS

        recorded = {"topics": TOPICS, "noise_std_per_level": DemoWindows.NOISE_STD_PER_LEVEL}
    size = model.cfg.image_size
    return {"cameras": {
        "inputs": [{"role": role, "topic": recorded["topics"][role], "encoding": "rgb8", "width": size,
                    "height": size} for role in ("front", "wrist")][: model.cfg.cameras],
        "image_levels": model.cfg.image_levels,
        "noise_std_per_level": recorded["noise_std_per_level"],
    }}


class _VjpGraph(torch.nn.Module):
    """Holds a traced VJP graph and its weights so that torch.onnx.export sees a module."""

    def __init__(self, traced: torch.fx.GraphModule, weights: list[torch.Tensor]):
        super().__init__()
        self.traced = traced
        for i, w in enumerate(weights):
            self.register_buffer(f"w{i}", w)
        self.count = len(weights)

    def weights(self) -> list[torch.Tensor]:
        return [getattr(self, f"w{i}") for i in range(self.count)]

    def forward(self, x_t, k, cotangent):
        return self.traced(x_t, k, cotangent, *self.weights())


class _CameraVjpGraph(_VjpGraph):
    def forward(self, x_t, k, cotangent, images, image_level):
        return self.traced(x_t, k, cotangent, images, image_level, *self.weights())


def trace_vjp(model: DFTransformer, example: tuple) -> _VjpGraph:
    """`example`: (x_t, k, cotangent) and, for a camera model, (images, image_level)."""
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    names = list(state)
    camera_count = len(example) - 3

    def vjp(x_t, k, cotangent, *rest):
        camera_inputs, weights = rest[:camera_count], rest[camera_count:]
        x = x_t.detach().requires_grad_(True)
        with torch.enable_grad():
            x0, eps = torch.func.functional_call(model, dict(zip(names, weights)), (x, k, None, *camera_inputs))
            (grad,) = torch.autograd.grad(x0, x, cotangent)
        return x0.detach(), eps.detach(), grad

    weights = [w.detach() for w in state.values()]
    traced = make_fx(vjp, decomposition_table=core_aten_decompositions(), tracing_mode="symbolic")(*example, *weights)
    return (_CameraVjpGraph if camera_count else _VjpGraph)(traced, weights).eval()


class _CameraDenoise(torch.nn.Module):
    """The denoise graph of a camera model: (x_t, k, images, image_level)."""

    def __init__(self, model: DFTransformer):
        super().__init__()
        self.model = model

    def forward(self, x_t, k, images, image_level):
        return self.model(x_t, k, None, images, image_level)


def _attach(path: Path, meta: dict) -> None:
    m = onnx.load(str(path))
    del m.metadata_props[:]
    m.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
    m.producer_name = "df_train"
    onnx.save(m, str(path))


def export(checkpoint: Path, out: Path) -> dict:
    """Write out (denoise) and its .vjp.onnx sibling; returns timings and sizes."""
    if out.suffix != ".onnx":
        # The contract names the graphs NAME.onnx and NAME.vjp.onnx beside each other.
        raise ValueError(f"out: expected a path ending in .onnx (the contract names the graphs by it), got {out}")
    model, cfg, ckpt = load_model(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = out.name.removesuffix(".onnx")
    meta = contract(cfg, ckpt, model, name)
    b, t, d = 2, cfg.tokens, cfg.layout.token_dim
    x = torch.randn(b, t, d)
    k = torch.randint(0, cfg.timesteps, (b, t))
    batch = torch.export.Dim("batch", min=1, max=4096)
    tokens = torch.export.Dim("tokens", min=1, max=cfg.tokens)
    dyn = {0: batch, 1: tokens}
    camera_inputs, camera_names = (), []
    if model.cfg.cameras:
        size = model.cfg.image_size
        camera_inputs = (torch.rand(b, t, model.cfg.cameras, size, size, 3),
                         torch.randint(0, model.cfg.image_levels + 1, (b, t)))
        camera_names = ["images", "image_level"]
    report = {}
    start = time.perf_counter()
    torch.onnx.export(
        _CameraDenoise(model).eval() if camera_inputs else model, (x, k, *camera_inputs), str(out), dynamo=True,
        external_data=False, verbose=False,
        input_names=["x_t", "k", *camera_names], output_names=["x0", "eps"],
        dynamic_shapes=(dyn, dyn, *[dyn] * len(camera_inputs)),
    )
    report["denoise_export_s"] = time.perf_counter() - start
    vjp_path = out.with_name(meta["graphs"]["denoise_vjp"])
    start = time.perf_counter()
    example = (x, k, torch.randn(b, t, d), *camera_inputs)
    graph = trace_vjp(model, example)
    torch.onnx.export(
        graph, example, str(vjp_path), dynamo=True, external_data=False, verbose=False,
        input_names=["x_t", "k", "cotangent", *camera_names], output_names=["x0", "eps", "grad_x_t"],
        dynamic_shapes=(dyn, dyn, dyn, *[dyn] * len(camera_inputs)),
    )
    report["vjp_export_s"] = time.perf_counter() - start
    for path in (out, vjp_path):
        _attach(path, meta)
    report["denoise_bytes"] = out.stat().st_size
    report["vjp_bytes"] = vjp_path.stat().st_size
    return report
