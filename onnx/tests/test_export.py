import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from df_train.export import METADATA_KEY, export, load_model, training_commits
from df_train.provenance import git_commit


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


def test_provenance_names_the_code_that_trained_the_model(exported):
    _, out, _ = exported
    contract = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}[METADATA_KEY])
    assert contract["provenance"]["git_commit"] == git_commit(), "trained and exported from this checkout"
    resumed = {"train_commits": [{"step": 0, "commit": "aaa"}, {"step": 500, "commit": "bbb+dirty"}]}
    assert training_commits(resumed) == "aaa from step 0, bbb+dirty from step 500"
    assert training_commits({"train_commits": [{"step": 0, "commit": "aaa"}, {"step": 9, "commit": "aaa"}]}) == "aaa"
    assert training_commits({}).startswith("unknown (not recorded; exported from ")


def test_export_builds_the_model_the_run_trained_not_todays_defaults(trained, tmp_path):
    from df_train.export import contract

    ckpt = torch.load(trained[1], weights_only=False)
    model, cfg, _ = load_model(trained[1])
    assert ckpt["model_config"] == model.cfg.to_dict(), "recorded at training"
    assert ckpt["camera_inputs"] is None, "no cameras"
    # A run whose recorded model says non-causal (the contract's runtime would refuse it) is
    # exported as it trained, not as today's default says.
    ckpt["model_config"]["causal"] = False
    path = tmp_path / "noncausal.pt"
    torch.save(ckpt, path)
    model, cfg, ckpt = load_model(path)
    assert contract(cfg, ckpt, model, "x")["causal"] is False


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    fake = tmp_path / "notes.pt"
    fake.write_text("# not a checkpoint\n")
    with pytest.raises(ValueError, match=r"checkpoint: .*notes.pt is not a training checkpoint \(UnpicklingError"):
        export(fake, tmp_path / "x.onnx")


def test_an_output_not_named_onnx_is_refused(trained, tmp_path):
    with pytest.raises(ValueError, match=r"out: expected a path ending in .onnx .*, got .*tiny$"):
        export(trained[1], tmp_path / "tiny")
    assert not list(tmp_path.iterdir())


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
