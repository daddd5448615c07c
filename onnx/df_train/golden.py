"""Golden vectors: the reference sampler's every input, noise draw and intermediate state.

One JSON file per (matrix kind, guided or not). The Rust parity test replays the recorded noise
through the ONNX graphs and must reproduce every row within the stated tolerance. Camera models
get the pyramid cases only, planned from two history tokens with their (random) images, one of
them tagged noisy, and the planned tokens without images, as the planner hands them over; their
guided cases use a guidance scale of 0.1 (the fruit swap plans without guidance). Models without
cameras also get MCG's redraws form (one plan, `REDRAWS` redrawn x0 per row, with their noise)
its prior-futures probe (only the shared tokens guided) and the futures weighted by the softmax
of their rewards (`MCG_TEMPERATURE`).
"""

import json
from pathlib import Path

import numpy as np
import torch

from . import matrices
from .reference_sampler import QuadraticTarget, ReferenceSampler, SamplerSettings, timestep_rows

CASE_KINDS = {"pyramid": 1.5, "autoregressive": 0.0, "full_sequence": 0.0, "trapezoid": 1.5}
TOLERANCE = 1e-4
# Guided rows of a camera model (guidance scale 0.1): ORT and PyTorch agree on one VJP to ~3e-6
# and on each row sampled from the reference's previous row to TOLERANCE (`step_tolerance`),
# but free-running, guidance amplifies float32 rounding row after row (measured: 1e-3 to 4.5e-2
# by the last row, depending on the checkpoint, on an Intel machine; 0.15 by row 11 of the
# shipped fruit swap golden on an AMD EPYC with onnxruntime 1.32, whose kernels round
# differently). Free-running rows are only bounded by this; the step check is the parity.
CAMERA_GUIDED_TOLERANCE = 5e-1
# MCG's redraws form (the official code's `ddim_repeats`), for models without cameras.
REDRAWS = 2
# MCG's futures weighted by softmax(reward / tau): a tau at which the golden's weights are
# uneven (the quadratic rewards of its samples differ by a few units).
MCG_TEMPERATURE = 2.0


def _floats(t) -> list:
    return [float(f"{v:.9g}") for v in np.asarray(t, dtype=np.float32).ravel()]


def write_golden(model, cfg, out_dir: Path, model_path: str, seed: int = 0,
                 context_tokens: int = 1, horizon: int = 6, sampling_steps: int = 8) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    d = cfg.layout.token_dim
    t = context_tokens + horizon
    written = []
    cameras = model.cfg.cameras
    if cameras:
        context_tokens = 2
        t = context_tokens + horizon
    # (matrix kind, uncertainty, guided, guidance form, redraws, only the shared tokens guided,
    # MCG temperature); new cases go last, as a case's index seeds its draws.
    cases = [(kind, u, guided, "mean_shift", 0, False, None) for kind, u in CASE_KINDS.items()
             for guided in (False, True) if not cameras or kind == "pyramid"]
    cases.append(("pyramid", CASE_KINDS["pyramid"], True, "score", 0, False, None))
    if not cameras:
        cases.append(("pyramid", CASE_KINDS["pyramid"], True, "mean_shift", REDRAWS, False, None))
        cases.append(("pyramid", CASE_KINDS["pyramid"], True, "mean_shift", 0, True, None))
        cases.append(("pyramid", CASE_KINDS["pyramid"], True, "mean_shift", 0, False, MCG_TEMPERATURE))
    for case, (kind, u, guided, form, redraws, prior, temperature) in enumerate(cases):
        gen = torch.Generator().manual_seed(seed * 1000 + case)
        batch = 1 if redraws else 3 if guided else 2
        settings = SamplerSettings(
            eta=0.5,
            stabilization_level=cfg.stabilization_level,
            noise_clip=cfg.noise_clip,
            guidance_scale=(0.1 if cameras else 1.0) if guided else 0.0,
            guidance_form=form,
            max_gain=20.0,
            shared_tokens=context_tokens + 2 if guided and not redraws else 0,
            redraws=redraws,
            guided_tokens=context_tokens + 2 if prior else None,
            mcg_temperature=temperature,
            context_tokens=context_tokens,
        )
        rows = timestep_rows(matrices.build(kind, horizon, sampling_steps, u), context_tokens, cfg.timesteps, sampling_steps)
        x = torch.randn(batch, t, d, generator=gen)
        x[:, :context_tokens] = 0.5 * torch.randn(1, context_tokens, d, generator=gen)
        noise = torch.randn(len(rows) - 1, batch, t, d, generator=gen)
        redraw_noise = torch.randn(len(rows) - 1, redraws, t, d, generator=gen) if redraws else None
        target = 0.5 * torch.randn(d, generator=gen)
        weights = torch.ones(d)
        reward = QuadraticTarget(target, weights) if guided else None
        net, camera_doc = model, {}
        if cameras:
            size = model.cfg.image_size
            images = torch.zeros(t, cameras, size, size, 3)
            images[:context_tokens] = torch.rand(context_tokens, cameras, size, size, 3, generator=gen)
            levels = torch.full((t,), model.cfg.image_levels, dtype=torch.int64)
            levels[:context_tokens] = torch.tensor([2, 0])

            def net(x_in, k_in, images=images, levels=levels):
                b = x_in.shape[0]
                return model(x_in, k_in, images=images.expand(b, *images.shape), image_level=levels.expand(b, t))
            camera_doc = {"image_shape": list(images.shape), "images": _floats(images), "image_level": levels.tolist()}
        states = ReferenceSampler(net, model.alphas_cumprod.double().numpy(), settings).sample(x, rows, noise, reward, redraw_noise)
        doc = {
            "model": model_path,
            "tolerance": CAMERA_GUIDED_TOLERANCE if cameras and guided else TOLERANCE,
            "step_tolerance": TOLERANCE,
            "matrix": {"kind": kind, "uncertainty": u, "sampling_steps": sampling_steps, "horizon": horizon},
            "context_tokens": context_tokens,
            "shape": [batch, t, d],
            "settings": settings.__dict__,
            "guidance": {"kind": "quadratic_target", "target": _floats(target), "weights": _floats(weights)} if guided else None,
            "timestep_rows": rows.tolist(),
            "x_init": _floats(x),
            "noise": [_floats(n) for n in noise],
            "states": [_floats(s) for s in states],
        } | camera_doc
        if redraws:
            # Per row, the redrawn windows' draw [redraws, T, D]; the sampler takes it before the step's.
            doc["redraw_noise"] = [_floats(n) for n in redraw_noise]
        suffix = ("guided" if guided else "plain") + ("_score" if form == "score" else "") + ("_redraws" if redraws else "") + ("_prior" if prior else "") + ("_softmax" if temperature else "")
        path = out_dir / f"{kind}_{suffix}.json"
        path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
        written.append(path)
    return written
