import numpy as np
import torch

from df_train import matrices
from df_train.export import load_model
from df_train.reference_sampler import QuadraticTarget, ReferenceSampler, SamplerSettings, timestep_rows


def run(trained, guided, scale=1.0, shared=0, eta=0.5, kind="pyramid", seed=0, batch=3, guided_tokens=None):
    ckpt = trained[1]
    model, cfg, _ = load_model(ckpt)
    d = cfg.layout.token_dim
    rows = timestep_rows(matrices.build(kind, 5, 6, 1.0), 1, cfg.timesteps, 6)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 6, d, generator=gen)
    noise = torch.randn(len(rows) - 1, batch, 6, d, generator=gen)
    target = torch.full((d,), 1.5)
    settings = SamplerSettings(eta=eta, stabilization_level=cfg.stabilization_level, noise_clip=cfg.noise_clip,
                               guidance_scale=scale if guided else 0.0, shared_tokens=shared,
                               guided_tokens=guided_tokens)
    reward = QuadraticTarget(target, torch.ones(d)) if guided else None
    states = ReferenceSampler(model, model.alphas_cumprod.double().numpy(), settings).sample(x, rows, noise, reward)
    return states, rows, target


def test_guidance_moves_samples_towards_the_target(trained):
    plain, _, target = run(trained, guided=False)
    guided, _, _ = run(trained, guided=True, scale=2.0)
    dist = lambda s: (s[-1][:, 1:] - target).pow(2).mean().item()
    assert dist(guided) < 0.8 * dist(plain)


def test_mcg_shares_near_tokens_and_leaves_far_ones_independent(trained):
    states, _, _ = run(trained, guided=True, shared=3)
    final = states[-1]
    assert torch.equal(final[0, :3], final[1, :3]) and torch.equal(final[0, :3], final[2, :3])
    assert not torch.allclose(final[0, 3:], final[1, 3:])


def test_guided_tokens_limits_the_guidance_to_the_first_tokens(trained):
    plain, _, _ = run(trained, guided=False)
    # Only the context token may be guided, and it never steps: the plan is the unguided one.
    context_only, _, _ = run(trained, guided=True, guided_tokens=1)
    assert torch.equal(context_only[-1], plain[-1])
    near, _, _ = run(trained, guided=True, shared=3, guided_tokens=3)
    everything, _, _ = run(trained, guided=True, shared=3)
    assert not torch.allclose(near[-1], plain[-1]) and not torch.allclose(near[-1], everything[-1])


def test_tokens_whose_level_stays_are_untouched(trained):
    states, rows, _ = run(trained, guided=True, kind="autoregressive")
    for r in range(len(rows) - 1):
        same = rows[r] == rows[r + 1]
        assert torch.equal(states[r][:, same], states[r + 1][:, same])


def test_context_token_is_never_changed(trained):
    states, _, _ = run(trained, guided=True)
    assert all(torch.equal(s[:, 0], states[0][:, 0]) for s in states)


def test_eta_zero_ignores_the_noise_draws(trained):
    a, _, _ = run(trained, guided=False, eta=0.0, seed=0)
    ckpt = trained[1]
    model, cfg, _ = load_model(ckpt)
    # Same initial state, other noise draws: with eta = 0 the result must not change.
    b_states, rows, _ = run(trained, guided=False, eta=0.0, seed=0)
    assert torch.equal(a[-1], b_states[-1])
    settings = SamplerSettings(eta=0.0, stabilization_level=cfg.stabilization_level, noise_clip=cfg.noise_clip)
    other_noise = torch.randn(len(rows) - 1, *a[0].shape, generator=torch.Generator().manual_seed(99))
    c = ReferenceSampler(model, model.alphas_cumprod.double().numpy(), settings).sample(a[0], rows, other_noise)
    np.testing.assert_allclose(c[-1].numpy(), a[-1].numpy(), atol=1e-6)


class Doubler(torch.nn.Module):
    """x0 = 2 x_in, eps = 0: every guidance term has a closed form."""

    def forward(self, x_in, k_in):
        return 2 * x_in, torch.zeros_like(x_in)


def test_redraws_average_the_reward_over_the_plan_and_its_renoised_x0():
    ab = np.linspace(0.99, 0.05, 10)
    settings = SamplerSettings(eta=0.0, stabilization_level=0, guidance_scale=0.5, redraws=2)
    cur, nxt = np.array([-1, 5]), np.array([-1, 3])
    gen = torch.Generator().manual_seed(0)
    x, redraw_noise = torch.randn(1, 2, 3, generator=gen), torch.randn(2, 2, 3, generator=gen)
    target = torch.tensor([1.0, -1.0, 0.5])
    reward = QuadraticTarget(target, torch.ones(3))
    cot = reward.cotangent
    got = ReferenceSampler(Doubler(), ab, settings).step(x, cur, nxt, torch.zeros_like(x), reward, redraw_noise)

    a = ab[5]
    x0 = 2 * x[0, 1]
    redrawn = 2 * (np.sqrt(a) * x0 + np.sqrt(1 - a) * redraw_noise[:, 1])
    # d x0 / d x_in = 2; d x0' / d x_in = 2 sqrt(a) * 2 through the re-noised x0.
    grad = (2 * cot(x0) + 4 * np.sqrt(a) * cot(redrawn).sum(0)) / 3
    expected = np.sqrt(ab[3]) * (x0 + 0.5 * (1 - a) * grad)
    torch.testing.assert_close(got[0, 1], expected.float())
    assert torch.equal(got[0, 0], x[0, 0])
    plain = ReferenceSampler(Doubler(), ab, SamplerSettings(eta=0.0, stabilization_level=0, guidance_scale=0.5))
    assert not torch.allclose(plain.step(x, cur, nxt, torch.zeros_like(x), reward)[0, 1], got[0, 1])


class Lookahead(torch.nn.Module):
    """x0_t = 2 x_in_t + x_in_(t+1), eps = 0: the context's x0 reads the token after it."""

    def forward(self, x_in, k_in):
        x0 = 2 * x_in
        x0[:, :-1] = x0[:, :-1] + x_in[:, 1:]
        return x0, torch.zeros_like(x_in)


def test_the_reward_reads_only_the_planned_tokens():
    ab = np.linspace(0.99, 0.05, 10)
    cur, nxt = np.array([-1, 5]), np.array([-1, 3])
    x = torch.randn(1, 2, 3, generator=torch.Generator().manual_seed(0))
    reward = QuadraticTarget(torch.tensor([1.0, -1.0, 0.5]), torch.ones(3))

    def near_token(context_tokens):
        s = SamplerSettings(eta=0.0, stabilization_level=0, guidance_scale=0.5, context_tokens=context_tokens)
        return ReferenceSampler(Lookahead(), ab, s).step(x, cur, nxt, torch.zeros_like(x), reward)[0, 1]

    x0 = 2 * x[0, 1]
    expected = np.sqrt(ab[3]) * (x0 + 0.5 * (1 - ab[5]) * 2 * reward.cotangent(x0))
    torch.testing.assert_close(near_token(1), expected.float())
    # Read as a planned token, the context's own reward would pull the near token too.
    assert not torch.allclose(near_token(0), near_token(1))


def test_a_causal_model_gives_the_same_plan_whether_or_not_the_reward_reads_the_shared_context(trained):
    """Why the golden vectors written before the reward skipped the context still hold: with
    a causal model the context's x0 depends on the context alone, which never steps, and it is
    the same in every sample, so its reward shifts no softmax weight."""
    model, cfg, _ = load_model(trained[1])
    d = cfg.layout.token_dim
    rows = timestep_rows(matrices.build("pyramid", 5, 6, 1.0), 1, cfg.timesteps, 6)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 6, d, generator=gen)
    noise = torch.randn(len(rows) - 1, 3, 6, d, generator=gen)
    reward = QuadraticTarget(torch.full((d,), 1.5), torch.ones(d))

    def plan(context_tokens):
        s = SamplerSettings(eta=0.5, stabilization_level=cfg.stabilization_level, noise_clip=cfg.noise_clip,
                            guidance_scale=1.0, shared_tokens=3, mcg_temperature=2.0, context_tokens=context_tokens)
        return ReferenceSampler(model, model.alphas_cumprod.double().numpy(), s).sample(x, rows, noise, reward)[-1]

    torch.testing.assert_close(plan(1), plan(0), atol=1e-5, rtol=1e-5)


class Causal(torch.nn.Module):
    """x0_t = 2 x_in_t + x_in_(t-1), eps = 0: a far token's reward reaches the token before it."""

    def forward(self, x_in, k_in):
        x0 = 2 * x_in
        x0[:, 1:] = x0[:, 1:] + x_in[:, :-1]
        return x0, torch.zeros_like(x_in)


def test_mcg_temperature_weights_the_futures_by_the_softmax_of_their_rewards():
    ab = np.linspace(0.99, 0.05, 10)
    cur, nxt = np.array([-1, 5, 5]), np.array([-1, 3, 3])
    x = torch.randn(3, 3, 2, generator=torch.Generator().manual_seed(0))
    x[1:, :2] = x[0, :2]  # the context and the near token are shared; the far token differs
    reward = QuadraticTarget(torch.zeros(2), torch.ones(2))

    def near_token(x, temperature):
        s = SamplerSettings(eta=0.0, stabilization_level=0, guidance_scale=0.5, shared_tokens=2,
                            mcg_temperature=temperature)
        return ReferenceSampler(Causal(), ab, s).step(x, cur, nxt, torch.zeros_like(x), reward)[:, 1]

    even = near_token(x, None)
    torch.testing.assert_close(near_token(x, 1e6), even)
    # Cold: the near token follows the best future alone, as if every sample were that one.
    x_in = x.clone()
    x_in[:, 0] *= np.sqrt(ab[0])
    best = int(reward.reward(Causal()(x_in, None)[0]).argmax())
    torch.testing.assert_close(near_token(x, 1e-6), near_token(x[best].expand(3, -1, -1).clone(), None))
    assert not torch.allclose(near_token(x, 1e-6), even)


def test_the_next_state_form_moves_the_next_state_by_the_paper_branch_constant():
    ab = np.linspace(0.99, 0.05, 10)
    x = torch.randn(1, 3, 2, generator=torch.Generator().manual_seed(1))
    reward = QuadraticTarget(torch.zeros(2), torch.ones(2))

    def moved(cur, nxt, scale):
        s = SamplerSettings(eta=0.5, stabilization_level=0, guidance_scale=scale, guidance_form="next_state")
        sampler = ReferenceSampler(Causal(), ab, s)
        return sampler.step(x, cur, nxt, torch.zeros_like(x), reward) - sampler.step(x, cur, nxt, torch.zeros_like(x))

    cur, nxt = np.array([-1, 5, 7]), np.array([-1, 3, 5])
    # g = dr/dx_t through Causal: token 1 reads x0_1 = 2 x_1 + x_0 and x0_2 = 2 x_2 + x_1.
    x_in = x.clone()
    x_in[:, 0] *= np.sqrt(ab[0])
    x0 = Causal()(x_in, None)[0]
    g = -torch.stack([torch.zeros(1, 2), 2 * x0[:, 1] + x0[:, 2], 2 * x0[:, 2]], dim=1)
    for token in (1, 2):
        a_t, a_n = ab[cur[token]], ab[nxt[token]]
        sigma = 0.5 * np.sqrt((1 - a_n) / (1 - a_t)) * np.sqrt(1 - a_t / a_n)
        const = (1 - a_t) - np.sqrt(1 - a_n - sigma**2) * np.sqrt(1 - a_t)
        torch.testing.assert_close(moved(cur, nxt, 3.0)[:, token], (3.0 * const * g[:, token]).float())
    # A step to clean takes no guidance.
    assert torch.equal(moved(np.array([-1, 1, 1]), np.array([-1, -1, -1]), 3.0), torch.zeros_like(x))
