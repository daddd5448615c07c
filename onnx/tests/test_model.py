import pytest
import torch

from df_train.model import DFTransformer, ModelConfig
from df_train.schedule import alphas_cumprod


@pytest.mark.parametrize("parameterization", ["x0", "eps", "v"])
def test_outputs_satisfy_the_forward_process(parameterization):
    """Whatever the network predicts, x_t = sqrt(ab) x0 + sqrt(1 - ab) eps holds for (x0, eps)."""
    torch.manual_seed(0)
    cfg = ModelConfig(token_dim=6, max_tokens=5, width=16, depth=1, heads=2, parameterization=parameterization)
    model = DFTransformer(cfg, alphas_cumprod("cosine", 100))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 5, 6)
    k = torch.randint(0, 90, (2, 5))
    x0, eps = model(x, k)
    ab = model.alphas_cumprod[k][..., None]
    torch.testing.assert_close(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, x, atol=1e-4, rtol=1e-4)


def test_attention_is_causal():
    torch.manual_seed(0)
    model = DFTransformer(ModelConfig(token_dim=4, max_tokens=6, width=16, depth=2, heads=2), alphas_cumprod("linear", 50))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, 6, 4)
    k = torch.randint(0, 50, (1, 6))
    a, _ = model(x, k)
    x2 = x.clone()
    x2[:, 4:] += 5.0
    b, _ = model(x2, k)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_unknown_parameterization_is_named():
    with pytest.raises(ValueError, match="parameterization: unknown 'score'"):
        DFTransformer(ModelConfig(token_dim=4, parameterization="score"), alphas_cumprod("linear", 10))
