"""The flow-matching sampler: schedule, CFG, noise."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from audiostory_core.errors import InputError
from audiostory_core.stages.sampling import Denoiser, make_noise, reference_sigmas, sample_latents


def test_reference_sigma_schedule_and_timesteps():
    from audiostory_core.stages.sampling import _scheduler

    s = _scheduler("euler", 50, "cpu")
    np.testing.assert_allclose(s.sigmas.numpy(), np.append(np.linspace(1, 0.02, 50), 0.0), atol=1e-7)
    np.testing.assert_allclose(s.timesteps.numpy(), np.linspace(1000, 20, 50), atol=1e-4)
    assert reference_sigmas(4).tolist() == [1.0, 0.75, 0.5, 0.25]


class FakeDiT(torch.nn.Module):
    """Velocity = tokens mean (cond) so CFG arithmetic is visible; records calls."""

    class config:
        audio_seq_len = 5

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    dtype = torch.float32
    device = torch.device("cpu")

    def condition(self, tokens, seconds):
        return tokens, seconds

    def forward(self, x, t, context, pooled):
        self.calls.append((x.shape[0], float(t.reshape(-1)[0])))
        return torch.ones_like(x) * context.mean(dim=(1, 2))[:, None, None]


def test_cfg_combines_velocities_as_u_plus_g_c_minus_u():
    dit = FakeDiT()
    tokens, null = torch.full((2, 3, 4), 2.0), torch.zeros(1, 3, 4)
    d = Denoiser(dit, tokens, null, [4.0, 5.0], guidance=4.0)
    v = d(torch.zeros(2, 5, 64), torch.tensor([0.5]))
    assert dit.calls == [(4, 0.5)]  # [negative x2 ; positive x2] in one batch
    torch.testing.assert_close(v, torch.full((2, 5, 64), 0.0 + 4.0 * (2.0 - 0.0)))
    assert d.pooled.tolist() == [4.0, 5.0, 4.0, 5.0]  # both halves share the duration


def test_euler_integrates_with_timestep_over_1000():
    dit = FakeDiT()
    x = sample_latents(dit, torch.full((1, 3, 4), 1.0), torch.zeros(1, 3, 4), [3.0], steps=4, guidance=1.0,
                       noise="reference")
    assert [t for _, t in dit.calls] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    torch.testing.assert_close(x, make_noise("reference", 1, 5) - 1.0)  # x1 + sum(dsigma) * v, v = 1


def test_reference_noise_is_the_official_draw_for_every_clip():
    torch.manual_seed(0)
    official = torch.randn(1, 176, 64)
    state = torch.get_rng_state()
    noise = make_noise("reference", 3, 176)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    for i in range(3):
        assert torch.equal(noise[i:i + 1], official)


def test_seeded_noise_uses_seed_plus_event_index():
    n = make_noise("seeded", 3, 10, seed=7)
    for i in range(3):
        assert torch.equal(n[i:i + 1], torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(7 + i)))
    assert torch.equal(make_noise("seeded", 3, 10, seed=7), n)
    with pytest.raises(InputError):
        make_noise("fancy", 1, 10)


def test_batched_events_equal_one_at_a_time(shared_pipeline):
    res = shared_pipeline.plan("A fire truck leaves the station with sirens blaring.", 7.5)
    toks = shared_pipeline.tokens(res)
    m = shared_pipeline.models
    both = sample_latents(m.dit, toks.fused, m.null_embedding, [8.0, 2.5], steps=6, noise="reference")
    for i, s in enumerate([8.0, 2.5]):
        one = sample_latents(m.dit, toks.fused[i:i + 1], m.null_embedding, [s], steps=6, noise="reference")
        torch.testing.assert_close(both[i:i + 1], one, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", ["heun", "dpmpp", "unipc"])
def test_other_samplers_run_and_approach_euler(shared_pipeline, sampler):
    res = shared_pipeline.plan("A fire truck leaves the station with sirens blaring.", 7.5)
    toks = shared_pipeline.tokens(res)
    m = shared_pipeline.models
    ref = sample_latents(m.dit, toks.fused, m.null_embedding, [8.0, 2.5], steps=50, noise="reference")
    alt = sample_latents(m.dit, toks.fused, m.null_embedding, [8.0, 2.5], steps=20, noise="reference",
                         sampler=sampler)
    assert alt.shape == ref.shape and torch.isfinite(alt).all()
    assert ((alt - ref).norm() / ref.norm()) < 0.2  # same ODE, different solver
