"""The noise schedule, training targets and DDIM sampler shared by every method and backbone."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn
from tqdm.auto import tqdm

from benchmark import conditioning
from benchmark.errors import BenchmarkError

if TYPE_CHECKING:
    from benchmark.api import Backbone, LatentSpace, Prompts
    from benchmark.presets import Preset

BETA_START = 1e-4
BETA_END = 0.02

OnStep = Callable[[int], None]


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: ``eps = eps(empty) + scale * (eps(prompt) - eps(empty))``, both branches as
    one batch (conditional rows first); at ``scale`` 1 only the conditional branch runs."""

    prompts: Prompts
    scale: float

    @property
    def branches(self) -> int:
        return 1 if self.scale == 1.0 else 2

    def context(self, labels: torch.Tensor) -> torch.Tensor:
        """The context of one network evaluation over all branches for a batch with these prompts."""
        if self.branches == 1:
            return self.prompts.encode(labels)
        return self.prompts.encode(torch.cat([labels, torch.full_like(labels, conditioning.EMPTY_PROMPT)]))

    def combine(self, eps: torch.Tensor) -> torch.Tensor:
        if self.branches == 1:
            return eps
        conditional, empty = eps.chunk(2)
        return empty + self.scale * (conditional - empty)


class Diffusion:
    """Linear-beta DDPM noising for training and deterministic DDIM (eta = 0) for sampling.

    The DDIM update is computed here from the scheduler's ``alphas_cumprod`` rather than with
    ``DDIMScheduler.step``: it keeps no state between calls (so nested and concurrent sampling is
    safe) and it is differentiable end to end.
    """

    sampler = "ddim"

    def __init__(
        self, image_shape: tuple[int, int, int], sample_steps: int, num_train_timesteps: int = 1000, *,
        latents: LatentSpace | None = None, guidance: Guidance | None = None,
    ):
        """``image_shape`` is what the network denoises; with ``latents`` that is a latent, the prediction of x0 is
        not clipped to [-1, 1] and samples are decoded to images; ``guidance`` conditions on prompts."""
        if not 1 <= sample_steps <= num_train_timesteps:
            raise BenchmarkError(f"sample_steps must be between 1 and {num_train_timesteps}, got {sample_steps}")
        self.image_shape = tuple(image_shape)
        self.sample_steps = sample_steps
        self.num_train_timesteps = num_train_timesteps
        self.latents, self.guidance = latents, guidance
        schedule = dict(
            num_train_timesteps=num_train_timesteps,
            beta_schedule="linear",
            beta_start=BETA_START,
            beta_end=BETA_END,
            clip_sample=True,
        )
        self.noise_scheduler = DDPMScheduler(**schedule)
        ddim = DDIMScheduler(**schedule)
        ddim.set_timesteps(sample_steps)
        self.timesteps: torch.Tensor = ddim.timesteps.clone()  # long, descending, one per sampling step
        previous = self.timesteps - num_train_timesteps // sample_steps
        final = float(ddim.final_alpha_cumprod)
        alphas = ddim.alphas_cumprod
        self._alpha = [float(alphas[t]) for t in self.timesteps]
        self._alpha_prev = [float(alphas[p]) if p >= 0 else final for p in previous]

    @classmethod
    def for_preset(cls, preset: "Preset") -> "Diffusion":
        """The diffusion of a pixel-space, unconditional backbone at ``preset``."""
        return cls((preset.channels, preset.image_size, preset.image_size), preset.sample_steps)

    @classmethod
    def for_backbone(cls, backbone: "Backbone", preset: "Preset") -> "Diffusion":
        """The diffusion of ``backbone`` at ``preset``: in its latent space, guided by its prompts, if it has them."""
        latents = backbone.latent_space(preset)
        prompts = backbone.prompts(preset)
        shape = latents.shape if latents is not None else (preset.channels, preset.image_size, preset.image_size)
        guidance = Guidance(prompts, preset.guidance_scale) if prompts is not None else None
        return cls(shape, preset.sample_steps, latents=latents, guidance=guidance)

    def condition(self, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """The context of a training batch with these labels (None where the diffusion has no prompts)."""
        if self.guidance is None or labels is None:
            return None
        return self.guidance.prompts.encode(labels).to(device)

    def training_inputs(
        self, x0: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_t, t, noise)`` for a batch of clean images; ``t`` and ``noise`` come from the CPU ``generator``."""
        t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        t, noise = t.to(x0.device), noise.to(x0.device)
        return self.noise_scheduler.add_noise(x0, noise, t), t, noise

    def loss(self, model: nn.Module, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The noise-prediction MSE on one batch."""
        x_t, t, noise = self.training_inputs(x0, generator)
        return F.mse_loss(model(x_t, t), noise)

    def denoise(
        self, model: nn.Module, x_T: torch.Tensor, on_step: OnStep | None = None, labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the DDIM chain from ``x_T`` to an image in [-1, 1] (decoded, in latent space), keeping the
        autograd graph.

        ``on_step(i)`` is called before network evaluation ``i`` (``0 .. sample_steps - 1``). With guidance,
        ``labels`` are the prompts (default: :func:`benchmark.conditioning.sample_labels` from 0), and every
        evaluation runs both branches as one batch.
        """
        context = None
        if self.guidance is not None:
            if labels is None:
                labels = conditioning.sample_labels(0, x_T.shape[0], self.guidance.prompts.classes)
            context = self.guidance.context(labels).to(x_T.device)
        branches = 1 if self.guidance is None else self.guidance.branches
        x = x_T
        with conditioning.given(context):
            for i, t in enumerate(self.timesteps.tolist()):
                if on_step is not None:
                    on_step(i)
                inputs = x if branches == 1 else torch.cat([x] * branches)
                eps = model(inputs, torch.full((inputs.shape[0],), t, dtype=torch.long, device=x.device))
                x = self._ddim_update(x, eps if self.guidance is None else self.guidance.combine(eps), i)
        return x if self.latents is None else self.latents.decode(x)

    def _ddim_update(self, x: torch.Tensor, eps: torch.Tensor, i: int) -> torch.Tensor:
        alpha, alpha_prev = self._alpha[i], self._alpha_prev[i]
        x0 = (x - math.sqrt(1.0 - alpha) * eps) / math.sqrt(alpha)
        if self.latents is None:  # pixels live in [-1, 1]; latents have no such bound
            x0 = x0.clamp(-1.0, 1.0)
        return math.sqrt(alpha_prev) * x0 + math.sqrt(1.0 - alpha_prev) * eps

    def sample_labels(self, start: int, count: int) -> torch.Tensor | None:
        """The prompts of samples ``start .. start + count - 1`` as :meth:`sample` tells them; None unguided."""
        if self.guidance is None:
            return None
        return conditioning.sample_labels(start, count, self.guidance.prompts.classes)

    def sample(
        self,
        model: nn.Module,
        n: int,
        batch_size: int,
        generator: torch.Generator,
        on_step: OnStep | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """``n`` images as a CPU float tensor in [-1, 1]; the starting noise is drawn from ``generator``.

        With guidance, image ``i`` is told prompt ``i % classes`` (:func:`benchmark.conditioning.sample_labels`).

        The model runs in eval mode (its previous mode is restored afterwards) on its own device.
        """
        if n < 1 or batch_size < 1:
            raise BenchmarkError(f"need at least one image and a positive batch size, got n={n}, batch={batch_size}")
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        was_training = model.training
        model.eval()
        images = []
        try:
            with torch.no_grad(), tqdm(total=n, desc="sample", unit="img", disable=not progress) as bar:
                for start in range(0, n, batch_size):
                    count = min(batch_size, n - start)
                    x_T = torch.randn((count, *self.image_shape), generator=generator)
                    labels = self.sample_labels(start, count)
                    images.append(self.denoise(model, x_T.to(device), on_step, labels).clamp(-1.0, 1.0).cpu())
                    bar.update(count)
        finally:
            model.train(was_training)
        return torch.cat(images)
