"""The objective's formulas against hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from engine.train import objective as obj


def test_schedule_matches_scaled_linear_formula():
    ac = obj.alphas_cumprod()
    beta = lambda t: (math.sqrt(0.00085) + t * (math.sqrt(0.012) - math.sqrt(0.00085)) / 999) ** 2  # noqa: E731
    expected = 1.0
    for t in range(3):
        expected *= 1 - beta(t)
    assert ac[2].item() == pytest.approx(expected, rel=1e-12)
    assert ac.shape == (1000,)


def test_zero_terminal_snr_rescale_and_snr_after_it():
    ac = obj.alphas_cumprod(zero_terminal_snr=True)
    assert ac[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert ac[0].item() == pytest.approx(obj.alphas_cumprod()[0].item(), rel=1e-9)
    snr = obj.snr_table(ac)
    assert snr[-1].item() == 0.0                     # computed after the rescale


def test_noise_offset_adds_per_channel_constant():
    x0 = torch.zeros(2, 4, 8, 8)
    plain = obj.make_noise(x0, obj.NoiseOptions(), torch.Generator().manual_seed(0))
    offset = obj.make_noise(x0, obj.NoiseOptions(noise_offset=0.1), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    torch.randn(x0.shape, generator=g)
    xi = torch.randn((2, 4, 1, 1), generator=g)
    torch.testing.assert_close(offset, plain + 0.1 * xi)


def test_adaptive_noise_scale_uses_latent_mean():
    x0 = torch.full((1, 4, 4, 4), -2.0)
    opts = obj.NoiseOptions(noise_offset=0.1, adaptive_noise_scale=0.5)
    out = obj.make_noise(x0, opts, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    base = torch.randn(x0.shape, generator=g)
    xi = torch.randn((1, 4, 1, 1), generator=g)
    torch.testing.assert_close(out, base + (0.1 + 0.5 * 2.0) * xi)


def test_multires_noise_is_normalised():
    x0 = torch.zeros(2, 4, 32, 32)
    out = obj.make_noise(x0, obj.NoiseOptions(multires_noise_iterations=6), torch.Generator().manual_seed(1))
    assert out.std().item() == pytest.approx(1.0, abs=1e-5)


def test_timesteps_range_and_fixed_value():
    g = torch.Generator().manual_seed(0)
    t = obj.sample_timesteps(1000, 100, 200, g)
    assert t.min() >= 100 and t.max() < 200
    assert torch.equal(obj.sample_timesteps(3, 500, 500, g), torch.tensor([500, 500, 500]))


def test_add_noise_and_v_target():
    ac = obj.alphas_cumprod()
    x0, noise, t = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0), torch.tensor([10])
    a = ac[10].item()
    assert obj.add_noise(x0, noise, t, ac).item() == pytest.approx(math.sqrt(a) + 2 * math.sqrt(1 - a), rel=1e-6)
    assert obj.target_for(x0, noise, t, ac, False).item() == 2.0
    v = obj.target_for(x0, noise, t, ac, True).item()
    assert v == pytest.approx(2 * math.sqrt(a) - math.sqrt(1 - a), rel=1e-6)


def test_input_perturbation_changes_input_not_target():
    noise = torch.zeros(1, 4, 2, 2)
    out = obj.perturb_input_noise(noise, obj.NoiseOptions(ip_noise_gamma=0.1), torch.Generator().manual_seed(0))
    expected = 0.1 * torch.randn(noise.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, expected)


def test_element_losses():
    ac = obj.alphas_cumprod()
    pred, target, t = torch.full((1, 1, 1, 1), 3.0), torch.ones(1, 1, 1, 1), torch.tensor([0])
    l2 = obj.element_loss(pred, target, t, obj.LossOptions("l2"), ac)
    l1 = obj.element_loss(pred, target, t, obj.LossOptions("l1"), ac)
    assert l2.item() == 4.0 and l1.item() == 2.0
    c = 0.1 * 2.0
    huber = obj.element_loss(pred, target, t, obj.LossOptions("huber", "constant", 0.1, 2.0), ac)
    assert huber.item() == pytest.approx(2 * c * (math.sqrt(4 + c * c) - c), rel=1e-6)
    smooth = obj.element_loss(pred, target, t, obj.LossOptions("smooth_l1", "constant", 0.1, 2.0), ac)
    assert smooth.item() == pytest.approx(2 * (math.sqrt(4 + c * c) - c), rel=1e-6)


def test_huber_schedules():
    ac = obj.alphas_cumprod()
    t = torch.tensor([0, 500])
    exp = obj.huber_c_per_sample(t, obj.LossOptions("huber", "exponential", 0.1, 1.0), ac)
    alpha = -math.log(0.1) / 1000
    assert exp[1].item() == pytest.approx(math.exp(-alpha * 500), rel=1e-6)
    snr_c = obj.huber_c_per_sample(t, obj.LossOptions("huber", "snr", 0.1, 1.0), ac)
    sigma = math.sqrt((1 - ac[500].item()) / ac[500].item())
    assert snr_c[1].item() == pytest.approx(0.9 / (1 + sigma) ** 2 + 0.1, rel=1e-5)


def test_loss_weights():
    ac = obj.alphas_cumprod(zero_terminal_snr=True)
    snr = obj.snr_table(ac)
    t = torch.tensor([10, 999])
    s10 = snr[10].item()
    eps = obj.loss_weights(t, snr, obj.LossOptions(min_snr_gamma=5.0), v_prediction=False)
    assert eps[0].item() == pytest.approx(min(1.0, 5.0 / s10), rel=1e-6)
    assert eps[1].item() == 1.0                      # SNR = 0: weight 1, not 0/0
    v = obj.loss_weights(t, snr, obj.LossOptions(min_snr_gamma=5.0), v_prediction=True)
    assert v[0].item() == pytest.approx(min(s10, 5.0) / (s10 + 1), rel=1e-6)
    debiased = obj.loss_weights(t, snr, obj.LossOptions(debiased_estimation_loss=True), v_prediction=False)
    assert debiased[0].item() == pytest.approx(1 / math.sqrt(min(s10, 1000)), rel=1e-6)
    assert debiased[1].item() == pytest.approx(1 / math.sqrt(1e-3), rel=1e-5)
    like = obj.loss_weights(t, snr, obj.LossOptions(scale_v_pred_loss_like_noise_pred=True), True)
    capped = min(s10, 1000)
    assert like[0].item() == pytest.approx(capped / (capped + 1), rel=1e-6)


def test_reduce_is_weighted_mean_of_per_sample_means():
    elements = torch.stack([torch.full((4, 2, 2), 1.0), torch.full((4, 2, 2), 3.0)])
    assert obj.sample_losses(elements, torch.tensor([1.0, 0.5])).mean().item() == pytest.approx((1 + 1.5) / 2)
