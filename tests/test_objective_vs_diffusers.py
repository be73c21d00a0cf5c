"""sdft's noise and target functions (engine/train/objective.py) against diffusers' DDPMScheduler,
the reference every SD trainer and pipeline agrees with: the schedule, add_noise and
get_velocity, for epsilon and v-prediction, with and without zero-terminal-SNR."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from engine.models.tiny import scheduler_config
from engine.train import objective as obj

# Both ends of the schedule, where zero-terminal-SNR differs most, and points between.
TIMESTEPS = torch.tensor([0, 1, 17, 250, 499, 500, 751, 998, 999])


def _reference(v_prediction: bool, zero_terminal_snr: bool) -> DDPMScheduler:
    return DDPMScheduler(**scheduler_config(v_prediction), rescale_betas_zero_snr=zero_terminal_snr)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((len(TIMESTEPS), 4, 8, 8), generator=g)
    return x0, torch.randn(x0.shape, generator=g)


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_schedule_is_diffusers_schedule(zero_terminal_snr):
    ours = obj.alphas_cumprod(zero_terminal_snr=zero_terminal_snr)
    theirs = _reference(False, zero_terminal_snr).alphas_cumprod
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-5, atol=1e-7)
    if zero_terminal_snr:
        assert ours[-1].item() == pytest.approx(0.0, abs=1e-12)    # pure noise at the last step


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_add_noise_is_diffusers_add_noise(zero_terminal_snr):
    x0, noise = _batch()
    ours = obj.add_noise(x0, noise, TIMESTEPS, obj.alphas_cumprod(zero_terminal_snr=zero_terminal_snr))
    theirs = _reference(False, zero_terminal_snr).add_noise(x0, noise, TIMESTEPS)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_v_target_is_diffusers_velocity(zero_terminal_snr):
    x0, noise = _batch(1)
    ours = obj.target_for(x0, noise, TIMESTEPS, obj.alphas_cumprod(zero_terminal_snr=zero_terminal_snr),
                          v_prediction=True)
    theirs = _reference(True, zero_terminal_snr).get_velocity(x0, noise, TIMESTEPS)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    if zero_terminal_snr:   # at SNR 0 the velocity is -x0: the model must predict the image itself
        torch.testing.assert_close(ours[-1], -x0[-1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_epsilon_target_is_the_noise_and_the_two_targets_differ(zero_terminal_snr):
    x0, noise = _batch(2)
    cumprod = obj.alphas_cumprod(zero_terminal_snr=zero_terminal_snr)
    assert torch.equal(obj.target_for(x0, noise, TIMESTEPS, cumprod, v_prediction=False), noise)
    velocity = obj.target_for(x0, noise, TIMESTEPS, cumprod, v_prediction=True)
    # A swapped parameterisation would pass a test that only compares a target with itself.
    assert (velocity - noise).abs().mean() > 0.1


@pytest.mark.parametrize("v_prediction", [False, True])
def test_a_perfect_prediction_recovers_the_image_as_diffusers_does(v_prediction):
    """The scheduler's x0 estimate from our noisy input and our target gives back x0 exactly:
    the noise and the target agree with the sampler that will read the model's predictions."""
    x0, noise = _batch(3)
    steps = TIMESTEPS[TIMESTEPS < 999]      # at SNR > 0 the estimate divides by sqrt(alpha_bar)
    x0, noise = x0[: len(steps)], noise[: len(steps)]
    reference = _reference(v_prediction, False)
    cumprod = obj.alphas_cumprod()
    noisy = obj.add_noise(x0, noise, steps, cumprod)
    target = obj.target_for(x0, noise, steps, cumprod, v_prediction)
    for i, t in enumerate(steps.tolist()):
        estimate = reference.step(target[i:i + 1], t, noisy[i:i + 1]).pred_original_sample
        torch.testing.assert_close(estimate, x0[i:i + 1], rtol=1e-3, atol=1e-3)
