import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from benchmark.api import BenchmarkError
from benchmark.diffusion import Diffusion
from benchmark.presets import get_preset
from nets import TwoConv


def test_for_preset_reads_shape_and_steps():
    diffusion = Diffusion.for_preset(get_preset("tiny"))
    assert diffusion.image_shape == (1, 16, 16)
    assert diffusion.sample_steps == 50 and diffusion.sampler == "ddim"
    assert diffusion.timesteps.tolist() == list(range(980, -1, -20))


def test_invalid_sample_steps():
    with pytest.raises(BenchmarkError, match="sample_steps"):
        Diffusion((1, 8, 8), 0)


def test_training_inputs_follow_the_generator():
    diffusion = Diffusion((1, 8, 8), 10)
    x0 = torch.rand(16, 1, 8, 8) * 2 - 1
    x_t, t, noise = diffusion.training_inputs(x0, torch.Generator().manual_seed(5))
    again = diffusion.training_inputs(x0, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip((x_t, t, noise), again))
    assert t.dtype == torch.long and 0 <= t.min() and t.max() < 1000
    assert x_t.shape == noise.shape == x0.shape
    abar = diffusion.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * noise)


def test_loss_is_the_noise_mse():
    diffusion, model = Diffusion((1, 8, 8), 10), TwoConv(width=8)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    loss = diffusion.loss(model, x0, torch.Generator().manual_seed(1))
    x_t, t, noise = diffusion.training_inputs(x0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss, F.mse_loss(model(x_t, t), noise))


@pytest.mark.parametrize("steps", [1, 7, 20])
def test_denoise_matches_diffusers_ddim(steps):
    model, x_T = TwoConv(width=8), torch.randn(3, 1, 8, 8)
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=True)
    scheduler.set_timesteps(steps)
    expected = x_T
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model(expected, t.expand(3))
            expected = scheduler.step(eps, t, expected, eta=0.0).prev_sample
        ours = Diffusion((1, 8, 8), steps).denoise(model, x_T)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_denoise_is_differentiable_and_reports_steps():
    diffusion, model = Diffusion((1, 8, 8), 5), TwoConv(width=8)
    calls = []
    image = diffusion.denoise(model, torch.randn(2, 1, 8, 8), on_step=calls.append)
    image.square().sum().backward()
    assert calls == [0, 1, 2, 3, 4]
    assert model.out.weight.grad is not None and model.out.weight.grad.abs().sum() > 0


def test_nested_denoise_does_not_disturb_the_outer_chain():
    diffusion, model = Diffusion((1, 8, 8), 6), TwoConv(width=8)
    outer_x, inner_x = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        plain = diffusion.denoise(model, outer_x)
        nested = diffusion.denoise(model, outer_x, on_step=lambda i: diffusion.denoise(model, inner_x))
    assert torch.equal(plain, nested)


def test_sample_is_deterministic_batched_and_restores_mode():
    diffusion, model = Diffusion((1, 8, 8), 4), TwoConv(width=8)
    model.train()
    calls = []
    images = diffusion.sample(model, 5, 2, torch.Generator().manual_seed(7), on_step=calls.append)
    assert images.shape == (5, 1, 8, 8) and images.device.type == "cpu"
    assert images.min() >= -1 and images.max() <= 1
    assert calls == [0, 1, 2, 3] * 3  # three batches: 2 + 2 + 1 images
    assert model.training and not images.requires_grad
    assert torch.equal(images, diffusion.sample(model, 5, 2, torch.Generator().manual_seed(7)))
    assert not torch.equal(images, diffusion.sample(model, 5, 2, torch.Generator().manual_seed(8)))

