import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from df_train.export import METADATA_KEY, export, load_model


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    _, ckpt = trained
    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    report = export(ckpt, out)
    return ckpt, out, report


def test_both_graphs_carry_the_contract(exported):
    _, out, report = exported
    for path in (out, out.with_name("tiny.vjp.onnx")):
        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        contract = json.loads(meta[METADATA_KEY])
        assert contract["graphs"] == {"denoise": "tiny.onnx", "denoise_vjp": "tiny.vjp.onnx"}
        assert contract["layout"]["token_dim"] == 12
        assert len(contract["diffusion"]["alphas_cumprod"]) == contract["diffusion"]["timesteps"]
    assert report["denoise_bytes"] > 0 and report["vjp_bytes"] > 0


@pytest.mark.parametrize("batch,tokens", [(1, 1), (3, 6), (5, 4)])
def test_onnx_graphs_match_pytorch_at_dynamic_shapes(exported, batch, tokens):
    ckpt, out, _ = exported
    model, cfg, _ = load_model(ckpt)
    gen = torch.Generator().manual_seed(batch * 10 + tokens)
    x = torch.randn(batch, tokens, cfg.layout.token_dim, generator=gen)
    k = torch.randint(0, cfg.timesteps, (batch, tokens), generator=gen)
    cot = torch.randn(batch, tokens, cfg.layout.token_dim, generator=gen)
    xr = x.clone().requires_grad_(True)
    x0, eps = model(xr, k)
    (grad,) = torch.autograd.grad(x0, xr, cot)

    den = ort.InferenceSession(str(out)).run(None, {"x_t": x.numpy(), "k": k.numpy()})
    np.testing.assert_allclose(den[0], x0.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(den[1], eps.detach().numpy(), atol=1e-4)
    vjp = ort.InferenceSession(str(out.with_name("tiny.vjp.onnx"))).run(
        None, {"x_t": x.numpy(), "k": k.numpy(), "cotangent": cot.numpy()}
    )
    np.testing.assert_allclose(vjp[0], x0.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(vjp[2], grad.numpy(), atol=1e-5)
    assert np.abs(grad.numpy()).max() > 1e-3, "the VJP is not trivially zero"
