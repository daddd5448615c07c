"""PyTorch reference sampler: DDIM over a scheduling matrix with per-token noise levels,
stabilized clean context, reward guidance and Monte Carlo Guidance (MCG).

This is the specification the Rust sampler is tested against (golden vectors); it is written
for clarity, straight from the equations in CONTRACT.md, not for speed.
"""

from dataclasses import dataclass

import numpy as np
import torch

from .schedule import level_to_timestep


@dataclass
class SamplerSettings:
    eta: float = 0.0
    stabilization_level: int = 10
    noise_clip: float = 6.0
    guidance_scale: float = 0.0
    # "mean_shift": gain 1 - ab_t; "score": min((1 - ab_t) / sqrt(ab_t), max_gain); "next_state":
    # ((1 - ab_t) - c_eps sqrt(1 - ab_t)) / sqrt(ab_t'), 0 on a step to clean (CONTRACT.md).
    guidance_form: str = "mean_shift"
    max_gain: float = 100.0
    # Tokens [0, shared_tokens) are shared by all samples of the batch: MCG averages their
    # guidance gradient over the batch and gives them one noise draw.
    shared_tokens: int = 0
    # Redraws R (the official code's `ddim_repeats`; batch of 1): at every row the reward is
    # averaged over the plan's x0 and R redrawn ones, each noisy token re-noised from x0 to its
    # level and denoised again. The context is the same in every draw.
    redraws: int = 0
    # Only tokens [0, guided_tokens) take the guidance shift (None: every token); the others
    # follow the model unguided while the reward still reads them (MCG over prior futures).
    guided_tokens: int | None = None
    # MCG's weighting of the samples in that average: None evenly; tau > 0 by
    # softmax(reward(x0_b) / tau), each sample's own reward at the row's x0.
    mcg_temperature: float | None = None
    # The first context_tokens tokens are clean history: the reward reads only the tokens
    # after them (the planned ones), as the Rust sampler's guidance does.
    context_tokens: int = 0


def timestep_rows(matrix: np.ndarray, context_tokens: int, timesteps: int, sampling_steps: int) -> np.ndarray:
    """Matrix levels [R, H] -> timesteps [R, C+H]; context tokens are clean (-1) in every row."""
    to_t = np.vectorize(lambda m: level_to_timestep(int(m), timesteps, sampling_steps))
    body = to_t(matrix).astype(np.int64)
    context = np.full((len(matrix), context_tokens), -1, dtype=np.int64)
    return np.concatenate([context, body], axis=1)


@dataclass
class QuadraticTarget:
    """r(x0) = -1/2 sum w (x0 - target)^2 per sample, a reward to maximize."""
    target: torch.Tensor
    weights: torch.Tensor

    def cotangent(self, x0: torch.Tensor) -> torch.Tensor:
        """dr/dx0."""
        return -self.weights * (x0 - self.target)

    def reward(self, x0: torch.Tensor) -> torch.Tensor:
        """r of each sample of x0 [B, T, D] -> [B]."""
        return (-0.5 * self.weights * (x0 - self.target) ** 2).sum(dim=(1, 2))


class ReferenceSampler:
    def __init__(self, model: torch.nn.Module, alphas_cumprod: np.ndarray, settings: SamplerSettings):
        self.model = model
        self.ab = np.asarray(alphas_cumprod, dtype=np.float64)
        self.s = settings

    def alpha_bar(self, t: np.ndarray) -> np.ndarray:
        return np.where(t < 0, 1.0, self.ab[np.clip(t, 0, None)])

    def step(self, x, cur, nxt, z, guidance=None, redraw_noise=None):
        s = self.s
        if np.any(nxt > cur):
            raise ValueError(f"scheduling matrix: a level rises from {cur} to {nxt}")
        clean = cur < 0
        k_in = torch.as_tensor(np.where(clean, s.stabilization_level, cur))[None].expand(x.shape[0], -1)
        in_scale = np.where(clean, np.sqrt(self.ab[s.stabilization_level]), 1.0)
        x_in = x * torch.as_tensor(in_scale, dtype=torch.float32)[None, :, None]
        if guidance is None:
            with torch.no_grad():
                x0, eps = self.model(x_in, k_in)
            grad = None
        else:
            x_in = x_in.detach().requires_grad_(True)
            with torch.enable_grad():
                x0, eps = self.model(x_in, k_in)
                outputs = [x0]
                if s.redraws:
                    outputs.append(self.redrawn_x0(x_in, k_in, x0, cur, redraw_noise))
                grad = sum(torch.autograd.grad(outputs, x_in, [self.planned_cotangent(guidance, o) for o in outputs]))
                grad = grad / (1 + s.redraws)
            x0, eps = x0.detach(), eps.detach()
            n = s.shared_tokens
            if s.mcg_temperature is None:
                weights = torch.full((x.shape[0],), 1.0 / x.shape[0])
            else:
                planned = x0[:, s.context_tokens:]
                weights = torch.softmax(guidance.reward(planned).double() / s.mcg_temperature, dim=0).float()
            grad[:, :n] = (weights[:, None, None] * grad[:, :n]).sum(dim=0, keepdim=True)
            if s.guided_tokens is not None:
                grad[:, s.guided_tokens:] = 0.0
        eps = eps.clamp(-s.noise_clip, s.noise_clip)
        a_t, a_n = self.alpha_bar(cur), self.alpha_bar(nxt)
        changed = nxt != cur

        def per_token(v):
            return torch.as_tensor(np.where(changed, v, 0.0), dtype=torch.float32)[None, :, None]

        with np.errstate(divide="ignore", invalid="ignore"):
            sigma = s.eta * np.sqrt((1 - a_n) / (1 - a_t)) * np.sqrt(1 - a_t / a_n)
        sigma = np.where(changed, sigma, 0.0)
        c_eps = np.sqrt(np.clip(1 - a_n - sigma**2, 0, None))
        if grad is not None:
            # Guidance shifts the clean estimate by scale * gain * grad; eps stays the network's.
            if s.guidance_form == "mean_shift":
                gain = 1 - a_t
            elif s.guidance_form == "score":
                gain = np.minimum((1 - a_t) / np.sqrt(a_t), s.max_gain)
            else:
                moved = (1 - a_t) - c_eps * np.sqrt(1 - a_t)
                gain = np.where(a_n >= 1.0, 0.0, moved / np.sqrt(a_n))
            x0 = x0 + per_token(s.guidance_scale * gain) * grad
        z = z.clone()
        z[:, : s.shared_tokens] = z[:1, : s.shared_tokens]
        x_next = (
            per_token(np.sqrt(a_n)) * x0
            + per_token(c_eps) * eps
            + per_token(sigma) * z
        )
        return torch.where(torch.as_tensor(changed)[None, :, None], x_next, x)

    def planned_cotangent(self, guidance, x0):
        """dr/dx0 of the planned tokens; the context gets none."""
        cotangent = torch.zeros_like(x0)
        c = self.s.context_tokens
        cotangent[:, c:] = guidance.cotangent(x0.detach()[:, c:])
        return cotangent

    def redrawn_x0(self, x_in, k_in, x0, cur, noise):
        """The R redrawn x0 [R, T, D] of a plan (batch 1), differentiable in x0: noisy tokens
        re-noised from x0 with `noise` and denoised again; clean ones are the plan's own."""
        if x0.shape[0] != 1 or noise is None or noise.shape[0] != self.s.redraws:
            raise ValueError(f"redraws need a plan of batch 1 and {self.s.redraws} noise draws per row")
        noisy = torch.as_tensor(cur >= 0)[None, :, None]
        a = self.alpha_bar(cur)
        renoised = (torch.as_tensor(np.sqrt(a), dtype=torch.float32)[None, :, None] * x0
                    + torch.as_tensor(np.sqrt(1 - a), dtype=torch.float32)[None, :, None] * noise)
        x_draw = torch.where(noisy, renoised, x_in.detach())
        x0_draw, _ = self.model(x_draw, k_in.expand(self.s.redraws, -1))
        return torch.where(noisy, x0_draw, x0)

    def sample(self, x: torch.Tensor, rows: np.ndarray, noise: torch.Tensor, guidance=None,
               redraw_noise=None) -> list[torch.Tensor]:
        """Walk the timestep rows [R, T] from state x [B, T, D]; noise [R-1, B, T, D];
        guidance: a reward with `cotangent(x0)` and `reward(x0)` (QuadraticTarget), or None;
        redraw_noise [R-1, redraws, T, D] when redraws are on.

        Returns the state after every row (index 0 = the initial state, whose shared tokens
        are sample 0's).
        """
        n = self.s.shared_tokens
        x = x.clone()
        x[:, :n] = x[:1, :n]
        states = [x]
        for r in range(len(rows) - 1):
            x = self.step(x, rows[r], rows[r + 1], noise[r], guidance,
                          None if redraw_noise is None else redraw_noise[r])
            states.append(x)
        return states
