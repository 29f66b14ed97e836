"""The one training loop every weight-training method and ``train-dense`` use, so all see the same data and noise."""
from __future__ import annotations

import copy
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from benchmark import conditioning
from benchmark.api import BenchmarkError, MethodContext
from benchmark.data import to_model_range, write_atomically
from benchmark.presets import Recipe

if TYPE_CHECKING:
    from benchmark.diffusion import Diffusion

GRAD_CLIP_NORM = 1.0

ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


PROBE_IMAGES = 64  # the fixed batch the loss right after pruning is measured on


def probe_batch(images: torch.Tensor, diffusion: Diffusion) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_t, t, noise)`` of one fixed batch, the same for every cell on a data set: the first
    :data:`PROBE_IMAGES` images of a seed-0 permutation (of the training images: the data sets here have no
    held-out split), timesteps spread evenly over the diffusion's, noise from seed 0. ``images`` are uint8
    pixels or a latent backbone's latents; a conditional backbone is probed with its empty prompt."""
    generator = torch.Generator().manual_seed(0)
    x0 = images[torch.randperm(len(images), generator=generator)[:PROBE_IMAGES]]
    x0 = to_model_range(x0) if x0.dtype == torch.uint8 else x0
    t = torch.linspace(0, diffusion.num_train_timesteps - 1, len(x0)).long()
    noise = torch.randn(x0.shape, generator=generator)
    return diffusion.noise_scheduler.add_noise(x0, noise, t), t, noise


@torch.no_grad()
def probe_loss(model: nn.Module, probe: tuple[torch.Tensor, torch.Tensor, torch.Tensor], device: torch.device) -> float:
    """The noise-prediction MSE of ``model`` (in eval mode; its mode is restored) on the probe batch."""
    x_t, t, noise = (tensor.to(device) for tensor in probe)
    was_training = model.training
    model.eval()
    try:
        return F.mse_loss(model(x_t, t), noise).item()
    finally:
        model.train(was_training)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainingStream:
    """The batches and the timestep/noise generator of one training budget, and how far it has got.

    Successive ``train`` calls that share a stream (a method trained in stages) see exactly the inputs
    one uninterrupted call would, so every method sees the same data at its step k.
    """

    batches: Iterator[torch.Tensor]
    generator: torch.Generator
    step: int = 0
    labels: Iterator[torch.Tensor] | None = None  # a conditional backbone's prompts, aligned with ``batches``

    @classmethod
    def start(cls, ctx: MethodContext) -> "TrainingStream":
        labels = None if ctx.labels is None else ctx.labels()
        return cls(ctx.batches(), torch.Generator().manual_seed(ctx.seed), labels=labels)

    @classmethod
    def resume(
        cls, batches: Iterator[torch.Tensor], generator_state: torch.Tensor, step: int,
        labels: Iterator[torch.Tensor] | None = None,
    ) -> "TrainingStream":
        """A stream at ``step``: ``batches`` (and ``labels``) must already start at that step's batch."""
        generator = torch.Generator()
        generator.set_state(generator_state)
        return cls(batches, generator, step, labels)


def lr_factor(recipe: Recipe, step: int, total_steps: int) -> float:
    """The learning-rate multiplier at optimizer step ``step`` (from 0) of a ``total_steps`` budget."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    if recipe.decay == "constant":
        return 1.0
    span = max(1, total_steps - recipe.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - recipe.warmup_steps) / span)))


class Optimisation:
    """AdamW, its learning-rate schedule and the weights' EMA for one budget of ``total_steps``.

    ``start_step`` is where in the budget it begins: a method that gives each stage a fresh optimizer
    (and EMA) still follows the budget's one learning-rate schedule. Its ``state_dict`` makes a run
    resumable.
    """

    def __init__(self, model: nn.Module, recipe: Recipe, total_steps: int, start_step: int = 0):
        self.total_steps = total_steps
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=recipe.lr, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(recipe, start_step + step, total_steps)
        )
        self.ema = (
            AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay))
            if recipe.ema_decay is not None
            else None
        )

    def step(self, model: nn.Module) -> None:
        torch.nn.utils.clip_grad_norm_(self.parameters, GRAD_CLIP_NORM)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


@dataclass
class Continuation:
    """Where one cell's training stopped when its budget was spent: enough to continue it to a larger budget."""

    step: int
    model: dict[str, torch.Tensor]  # the trained weights (before an EMA replaces them) and buffers
    optimisation: dict[str, Any]
    stream: TrainingStream
    rng: tuple[torch.Tensor, ...]  # torch's global generators (CPU, then the device's), e.g. for dropout
    losses: list[float]


CONTINUED_FROM = "continued_from_step"  # where ``ctx.measured`` says the training began, if not at step 0
KEPT_CONTINUATIONS = 4  # a worker runs one cell's budgets one after another: a few suffice
_CONTINUATIONS: OrderedDict[str, Continuation] = OrderedDict()


def _rng_state(device: torch.device) -> tuple[torch.Tensor, ...]:
    cuda = (torch.cuda.get_rng_state(device),) if device.type == "cuda" else ()
    return torch.get_rng_state(), *cuda


def _set_rng_state(state: tuple[torch.Tensor, ...], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


def _continue(model: nn.Module, ctx: MethodContext, optimisation: Optimisation) -> Continuation | None:
    """A smaller budget's training of this cell, kept by this process or saved by another, loaded into ``model``
    and ``optimisation``."""
    kept = _CONTINUATIONS.pop(ctx.continuation, None) or _load(ctx)
    if kept is None or kept.step >= ctx.train_steps:
        return None
    model.load_state_dict(kept.model)
    optimisation.load_state_dict(kept.optimisation)
    _set_rng_state(kept.rng, ctx.device)
    ctx.measured[CONTINUED_FROM] = kept.step
    return kept


def _keep(ctx: MethodContext, model: nn.Module, optimisation: Optimisation, stream: TrainingStream,
          losses: list[float]) -> None:
    kept = _CONTINUATIONS[ctx.continuation] = Continuation(
        stream.step, copy.deepcopy(model.state_dict()), copy.deepcopy(optimisation.state_dict()), stream,
        _rng_state(ctx.device), losses,
    )
    while len(_CONTINUATIONS) > KEPT_CONTINUATIONS:
        _CONTINUATIONS.popitem(last=False)
    if ctx.continuation_dir is not None:
        _save(_saved_path(ctx), kept)


def _saved_path(ctx: MethodContext) -> Path:
    return Path(ctx.continuation_dir) / f"{ctx.continuation}.pt"


def _save(path: Path, kept: Continuation) -> None:
    """Write ``kept`` (all but its batch iterators, which restart at its step) atomically to ``path``."""
    state = {"step": kept.step, "model": kept.model, "optimisation": kept.optimisation,
             "generator": kept.stream.generator.get_state(), "rng": list(kept.rng), "losses": kept.losses}
    write_atomically(path, lambda f: torch.save(state, f))


def _load(ctx: MethodContext) -> Continuation | None:
    """The continuation another process saved for this cell (a later invocation goes on from it), if any."""
    if ctx.continuation_dir is None:
        return None
    path = _saved_path(ctx)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # loading moves it to the model's device
    except FileNotFoundError:
        return None
    except Exception as e:  # an unreadable file costs the saved steps, not the cell
        warnings.warn(f"{path}: unreadable saved training ({type(e).__name__}: {e}); training from step 0")
        return None
    step = state["step"]
    labels = None if ctx.labels is None else ctx.labels(step)
    stream = TrainingStream.resume(ctx.batches(step), state["generator"], step, labels)
    return Continuation(step, state["model"], state["optimisation"], stream, tuple(state["rng"]), state["losses"])


def train(
    model: nn.Module,
    ctx: MethodContext,
    steps: int,
    *,
    extra_loss: ExtraLoss | None = None,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int, float], None] | None = None,
    desc: str = "train",
    stream: TrainingStream | None = None,
    optimisation: Optimisation | None = None,
) -> list[float]:
    """Train ``model``'s trainable parameters for ``steps`` AdamW steps on the noise-prediction loss.

    The recipe (learning rate, warm-up, decay, EMA) is ``ctx.preset.finetune`` over ``ctx.train_steps``,
    from the stream's position in that budget, unless an ``optimisation`` is given; with an EMA, the
    model holds the averaged weights once the budget's last step is taken. Batches come from
    ``ctx.batches()`` and timesteps/noise from a generator seeded with ``ctx.seed``, so two calls with the same context see identical inputs; pass one ``stream`` (and
    ``optimisation``) to several calls to continue where the previous call stopped.
    ``extra_loss(model, x_t, t, noise, pred)`` is added to the MSE; ``before_step(step)`` runs before
    the forward pass and ``after_step(step, loss)`` after the optimizer step (``step`` counts the stream's
    steps from 0). A conditional backbone's prompts (a ``condition_dropout`` share of them replaced by the
    empty prompt) are current during the step's forward passes, the extra loss's included. Returns the total
    loss of every step. The model's train/eval mode is restored.

    With ``ctx.continuation`` set, one call over the whole budget at a constant learning rate keeps where it
    stopped under that key in this process, and a later call with a larger budget and the same key continues
    from there: the cells of one model at budgets 300, 1000 and 3000 train 3000 steps in all, and each
    ends with the weights a separate run of its budget gives (``ctx.measured`` says where it began).
    """
    if steps < 0:
        raise BenchmarkError(f"training needs a non-negative number of steps, got {steps}")
    if steps == 0:  # no budget (``benchmark prune``): the model is handed on as it is
        return []
    continues = (ctx.continuation is not None and stream is None and optimisation is None
                 and steps == ctx.train_steps and ctx.preset.finetune.budget_independent)
    stream = stream or TrainingStream.start(ctx)
    if stream.step == 0 and ctx.probe is not None:  # the cell's first training step: the model as pruned
        ctx.measured.setdefault("loss_after_pruning", probe_loss(model, ctx.probe, ctx.device))
    optimisation = optimisation or Optimisation(model, ctx.preset.finetune, ctx.train_steps, stream.step)
    losses: list[float] = []
    kept = _continue(model, ctx, optimisation) if continues else None
    if kept is not None:
        stream, losses, steps = kept.stream, list(kept.losses), steps - kept.step
    was_training = model.training
    model.train()
    end = stream.step + steps
    try:
        with tqdm(total=end, initial=stream.step, desc=desc, disable=not ctx.progress) as bar:
            for _ in range(steps):
                step = stream.step
                if before_step is not None:
                    before_step(step)
                x0 = next(stream.batches).to(ctx.device)
                x_t, t, noise = ctx.diffusion.training_inputs(x0, stream.generator)
                context = None
                if stream.labels is not None:
                    labels = conditioning.drop_labels(next(stream.labels), ctx.preset.condition_dropout,
                                                      stream.generator)
                    context = ctx.diffusion.condition(labels, ctx.device)
                with conditioning.given(context):
                    pred = model(x_t, t)
                    loss = F.mse_loss(pred, noise)
                    if extra_loss is not None:
                        loss = loss + extra_loss(model, x_t, t, noise, pred)
                value = loss.item()
                if not math.isfinite(value):
                    raise NonFiniteLossError(f"{desc}: loss became {value} at step {step + 1} of {end}")
                optimisation.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimisation.step(model)
                stream.step += 1
                if after_step is not None:
                    after_step(step, value)
                losses.append(value)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
    finally:
        model.train(was_training)
    if continues:
        _keep(ctx, model, optimisation, stream, losses)
    if optimisation.ema is not None and stream.step >= optimisation.total_steps:  # the budget is spent
        with torch.no_grad():  # parameters only: buffers such as N:M masks stay the model's own
            for mine, averaged in zip(model.parameters(), optimisation.ema.module.parameters()):
                mine.copy_(averaged)
    return losses
