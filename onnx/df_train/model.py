"""The Diffusion Forcing denoiser: a causal transformer over tokens, each with its own noise level.

Attention is plain matmul + softmax (no fused SDPA) so that its backward exports to ONNX.
The network predicts x0, eps or v (the parameterization); `forward` always returns both the
clean-token estimate x0 and the noise estimate eps, which is the ONNX contract.
"""

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

PARAMETERIZATIONS = ("x0", "eps", "v")


@dataclass
class ModelConfig:
    token_dim: int
    max_tokens: int = 16
    cond_dim: int = 0
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    causal: bool = True
    parameterization: str = "v"
    # Camera conditioning (fruit swap): each token sees `cameras` RGB images of image_size²,
    # tagged with an image level: 0 clean, 1..image_levels-1 increasingly noisy ("tell the model
    # the observation is noisy", the paper's k > 0), image_levels = no image (future tokens).
    cameras: int = 0
    image_size: int = 32
    image_levels: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(k: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=k.device) / half)
    angles = k.to(torch.float32)[..., None] * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, w = h.shape
        q, k, v = self.qkv(h).reshape(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(w // self.heads)
        if self.causal:
            future = torch.ones(t, t, dtype=torch.bool, device=h.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, w))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width)
        self.attn = Attention(cfg.width, cfg.heads, cfg.causal)
        self.norm2 = nn.LayerNorm(cfg.width)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class CameraEncoder(nn.Module):
    """Images [B, T, cameras, H, W, 3] in [0, 1] -> one width-vector per token (cameras stacked
    as channels), plus an embedding of each token's image level."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = 3 * cfg.cameras
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.SiLU(),
        )
        side = cfg.image_size // 8
        # Normalized features and a small level embedding: images must weigh as much as the
        # token itself, or the network learns to ignore them (measured: it did, without).
        self.proj = nn.Sequential(nn.Linear(64 * side * side, cfg.width), nn.LayerNorm(cfg.width))
        self.level = nn.Embedding(cfg.image_levels + 1, cfg.width)
        nn.init.normal_(self.level.weight, std=0.02)
        self.absent = cfg.image_levels

    def forward(self, images: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        b, t, n, h, w, _ = images.shape
        x = images.permute(0, 1, 2, 5, 3, 4).reshape(b * t, n * 3, h, w)
        features = self.proj(self.conv(x).flatten(1)).reshape(b, t, -1)
        present = (level < self.absent).to(features.dtype)[..., None]
        return features * present + self.level(level)


class DFTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, alphas_cumprod):
        super().__init__()
        if cfg.parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization: unknown {cfg.parameterization!r}, expected one of {PARAMETERIZATIONS}"
            )
        self.cfg = cfg
        self.register_buffer("alphas_cumprod", torch.as_tensor(alphas_cumprod, dtype=torch.float32))
        self.token_in = nn.Linear(cfg.token_dim, cfg.width)
        self.cond_in = nn.Linear(cfg.cond_dim, cfg.width) if cfg.cond_dim else None
        self.cameras = CameraEncoder(cfg) if cfg.cameras else None
        self.level_mlp = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width))
        self.position = nn.Parameter(torch.zeros(cfg.max_tokens, cfg.width))
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm_out = nn.LayerNorm(cfg.width)
        self.token_out = nn.Linear(cfg.width, cfg.token_dim)
        nn.init.zeros_(self.token_out.weight)
        nn.init.zeros_(self.token_out.bias)

    def network(self, x_t: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None = None,
                images: torch.Tensor | None = None, image_level: torch.Tensor | None = None) -> torch.Tensor:
        """Raw network output in the model's parameterization."""
        t = x_t.shape[1]
        h = self.token_in(x_t) + self.level_mlp(timestep_embedding(k, self.cfg.width)) + self.position[:t]
        if self.cond_in is not None:
            h = h + self.cond_in(cond)
        if self.cameras is not None:
            h = h + self.cameras(images, image_level)
        for block in self.blocks:
            h = block(h)
        return self.token_out(self.norm_out(h))

    def forward(self, x_t: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None = None,
                images: torch.Tensor | None = None, image_level: torch.Tensor | None = None):
        """(x0, eps) for noisy tokens x_t [B,T,D] at timesteps k [B,T] in 0..K-1 (camera models:
        with their images and image levels)."""
        out = self.network(x_t, k, cond, images, image_level)
        ab = self.alphas_cumprod[k][..., None]
        a, s = ab.sqrt(), (1 - ab).sqrt()
        p = self.cfg.parameterization
        if p == "x0":
            return out, (x_t - a * out) / s
        if p == "eps":
            return (x_t - s * out) / a, out
        return a * x_t - s * out, s * x_t + a * out
