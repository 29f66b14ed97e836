"""Typed objects that plugins and the grid exchange.

A :class:`Backbone` builds a noise-prediction network ``model(x, t) -> eps`` and says which of its
parts a method may touch. A :class:`Method` turns a :class:`Pruned` state into a new one; methods
chain (``sparsedm+dipgo``) because each one receives the previous state.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

import torch
from torch import nn

from benchmark.errors import BenchmarkError, CheckpointMismatchError, PluginContractError

__all__ = [  # the errors are part of the plugin contract: plugins import them from here
    "Backbone", "BenchmarkError", "ChannelPruning", "CheckpointMismatchError", "KNOBS", "LatentSpace", "Method",
    "MethodContext", "NMPattern", "PluginContractError", "Prompts", "Pruned", "RunOptions", "StructuralTarget",
]

if TYPE_CHECKING:
    from benchmark.diffusion import Diffusion
    from benchmark.presets import Preset


@dataclass(frozen=True)
class NMPattern:
    """Keep ``n`` of every ``m`` consecutive weights along a layer's input dimension."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int)) or not 1 <= self.n < self.m:
            raise BenchmarkError(f"invalid N:M pattern {self.n}:{self.m}: need integers with 1 <= N < M, e.g. 2:4")

    @classmethod
    def parse(cls, text: str) -> "NMPattern":
        parts = str(text).split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise BenchmarkError(f"malformed N:M pattern {text!r}: write it as N:M with integers, e.g. 2:4")
        return cls(int(parts[0]), int(parts[1]))

    @property
    def density(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class StructuralTarget:
    """Where structural pruning stops.

    By default (written ``0.5``) channel groups are ranked across the whole network and removed until the
    measured MACs ratio is ``value``. With ``per_layer`` (written ``layer=0.3``) every layer loses the share
    ``value`` of its channels, the papers' setting (Diff-Pruning's ``ch_sparsity=0.3`` on CIFAR-10).
    """

    value: float
    per_layer: bool = False

    PREFIX: ClassVar[str] = "layer="

    def __post_init__(self) -> None:
        if not (0 <= self.value < 1 if self.per_layer else 0 < self.value <= 1):
            allowed = "a channel ratio in [0, 1)" if self.per_layer else "a MACs ratio in (0, 1]"
            raise BenchmarkError(f"structural target {self} is out of range: need {allowed}")

    @classmethod
    def parse(cls, text: str) -> "StructuralTarget":
        text = str(text).strip()
        per_layer = text.startswith(cls.PREFIX)
        number = text.removeprefix(cls.PREFIX)
        try:
            value = float(number)
        except ValueError:
            raise BenchmarkError(
                f"malformed structural target {text!r}: write a MACs ratio such as 0.5 or a per-layer channel "
                f"ratio such as {cls.PREFIX}0.3"
            ) from None
        return cls(value, per_layer)

    def __str__(self) -> str:
        return f"{self.PREFIX}{self.value}" if self.per_layer else str(self.value)

    def to_json(self) -> float | str:
        """A MACs target as the bare number (as cells always recorded it), a per-layer ratio as ``layer=...``."""
        return str(self) if self.per_layer else self.value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise BenchmarkError(f"{text!r} is not a fraction in (0, 1]")
    return value


KNOBS: dict[str, Callable[[str], Any]] = {
    "pattern": NMPattern.parse,
    "dipgo_target": _fraction,
    "structural_target": StructuralTarget.parse,
}
"""The :class:`RunOptions` fields a method may name as its operating-point knob, with their parsers."""


@dataclass
class RunOptions:
    """Options shared by every cell of a run; part of each cell's config hash."""

    pattern: NMPattern = field(default_factory=lambda: NMPattern(2, 4))
    srste_decay: float = 2e-4
    sparsedm_weight: float = 0.1
    dipgo_target: float = 0.5
    structural_target: StructuralTarget = field(default_factory=lambda: StructuralTarget(0.5))
    diffpruning_threshold: float = 0.05  # Diff-Pruning stops adding timesteps below this share of the max loss
    fid_samples: int | None = None  # None: the preset's default
    train_steps: int | None = None  # None: the preset's default
    checkpoints: dict[str, str] = field(default_factory=dict)  # backbone name -> dense checkpoint path

    def __post_init__(self) -> None:
        if not isinstance(self.structural_target, StructuralTarget):  # a bare number is a MACs target
            self.structural_target = StructuralTarget(float(self.structural_target))

    def with_knob(self, knob: str, text: str) -> tuple["RunOptions", str]:
        """These options with ``knob`` set from ``text``, and the value's canonical spelling (``0.3``, ``2:4``)."""
        value = KNOBS[knob](text)
        return replace(self, **{knob: value}), str(value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pattern": str(self.pattern),
            "srste_decay": self.srste_decay,
            "sparsedm_weight": self.sparsedm_weight,
            "dipgo_target": self.dipgo_target,
            "structural_target": self.structural_target.to_json(),
            "diffpruning_threshold": self.diffpruning_threshold,
            "fid_samples": self.fid_samples,
            "train_steps": self.train_steps,
            "checkpoints": dict(sorted(self.checkpoints.items())),
        }


@dataclass
class ChannelPruning:
    """Where structural methods may remove channels (:mod:`benchmark.structural`, torch-pruning's names).

    ``kept`` layers keep their output channels (the output head; a stem tied to raw parameters);
    ``heads`` maps each attention projection whose output is laid out per head to its number of
    heads, so heads stay whole and equal; ``unwrapped`` maps raw parameters outside any layer to
    their channel dimension.
    """

    kept: list[str]
    heads: dict[str, int] = field(default_factory=dict)
    unwrapped: dict[str, int] = field(default_factory=dict)


class LatentSpace(abc.ABC):
    """How a latent backbone maps the preset's images to the space it denoises, and back (a frozen VAE)."""

    shape: tuple[int, int, int]  # (channels, height, width) of one latent

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> latents (scaled as the network was trained on them)."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1]; differentiable (DiP-GO compares decoded trajectories)."""


class Prompts(abc.ABC):
    """What a text-conditioned backbone is told: prompt ``i`` of ``classes`` names the data set's label ``i``."""

    classes: int

    @abc.abstractmethod
    def text(self, label: int) -> str:
        """The prompt of ``label`` (:data:`benchmark.conditioning.EMPTY_PROMPT`: the empty prompt)."""

    @abc.abstractmethod
    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        """The text encoder's context ``[B, tokens, dims]`` for a ``[B]`` long tensor of labels (-1: empty)."""


class Backbone(abc.ABC):
    """A diffusion network family. Subclasses set the class fields and implement :meth:`build`."""

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str] = ""
    time_enters_every_block: ClassVar[bool] = True
    """False when the time step reaches the blocks only through the first block's input (U-ViT's
    time token). A block that reuses its cache then leaves every deeper block on both sides with the
    previous step's inputs, so skip schedules reuse those too (:func:`benchmark.skipping.cascade`)."""
    u_shaped: ClassVar[bool] = True
    """False for a flat stack of blocks (DiT); True when :meth:`blocks` pairs input and output sides."""
    in_all: ClassVar[bool] = True
    """Whether ``--backbones all`` includes it; one that would push the default run past its time budget runs
    when named."""
    conditional: ClassVar[bool] = False
    """True for a text-to-image backbone: its network reads the prompt's context from
    :func:`benchmark.conditioning.current` (its empty prompt when none is current), :meth:`prompts` says how
    labels become contexts, and the preset's guidance settings apply to it."""

    @abc.abstractmethod
    def build(self, preset: "Preset") -> nn.Module:
        """Return a freshly initialised network for ``preset``: ``model(x, t) -> eps``.

        ``x`` is ``[B, C, H, W]`` in [-1, 1], ``t`` a ``[B]`` long tensor of timesteps in [0, 1000).
        """

    @abc.abstractmethod
    def load_checkpoint(self, model: nn.Module, path: str) -> None:
        """Load official or benchmark weights into ``model`` strictly.

        Raises :class:`CheckpointMismatchError` naming missing and unexpected keys.
        """

    @abc.abstractmethod
    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The model's skippable blocks in execution order, as ``(qualified name, module)``.

        For a U-shaped network: input side, middle, output side, so that blocks ``i`` and
        ``n - 1 - i`` are at the same depth (the skip-schedule methods rely on it); for a flat
        one (``u_shaped = False``) simply first to last.
        """

    def prunable_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """Linear and Conv2d layers a weight-sparsity method may mask, by qualified name.

        The default takes every Linear/Conv2d except those named in :meth:`kept_dense`.
        """
        keep = set(self.kept_dense(model))
        return {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d)) and name not in keep
        }

    def kept_dense(self, model: nn.Module) -> list[str]:
        """Layers that stay dense by design (input stem, output head); none by default."""
        return []

    def channel_pruning(self, model: nn.Module) -> ChannelPruning:
        """Where structural methods may remove channels; by default everything but :meth:`kept_dense`."""
        return ChannelPruning(kept=self.kept_dense(model))

    def after_channel_pruning(self, model: nn.Module) -> None:
        """Bring attributes that layer shapes do not carry (channel counts, heads) up to date after
        channels were removed or a pruned model was reloaded; nothing by default."""

    def variants(self, preset: "Preset") -> dict[str, Callable[[], nn.Module]]:
        """Other layouts of this backbone at ``preset`` (e.g. other widths), by name, for
        ``benchmark latency --variant``; each builds a model that takes the preset's inputs. None by default."""
        return {}

    def example_inputs(self, preset: "Preset", batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs for MACs counting and latency: ``(x, t)`` for a batch of ``batch`` images (latents of a latent
        backbone; the harness doubles them where guidance evaluates two branches per image)."""
        x = torch.randn(batch, preset.channels, preset.image_size, preset.image_size)
        return x, torch.full((batch,), 500, dtype=torch.long)

    def latent_space(self, preset: "Preset") -> LatentSpace | None:
        """The frozen autoencoder between the preset's images and what the network denoises; None (the
        default) for a pixel-space backbone."""
        return None

    def prompts(self, preset: "Preset") -> Prompts | None:
        """The prompts and text encoder of a :attr:`conditional` backbone; None (the default) otherwise."""
        return None

    def prepare(self, preset: "Preset", device: torch.device, progress: bool = True) -> None:
        """Make the frozen parts the backbone needs at ``preset`` before its dense model is trained (e.g.
        train a tiny VAE); nothing by default."""


@dataclass
class Pruned:
    """What a method hands on: the network plus what makes it cheaper.

    ``masks`` maps a prunable layer's qualified name to a bool mask of its weight's shape that
    the method claims is ``pattern``-sparse (the harness validates the claim). ``schedule`` is a
    bool ``[sample_steps, n_blocks]`` tensor, True where a block runs and False where it reuses
    its output cached at the previous sampling step.
    """

    model: nn.Module
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    pattern: NMPattern | None = None
    schedule: torch.Tensor | None = None
    train_steps: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    skipped_layers: dict[str, str] = field(default_factory=dict)  # layer name -> why it stayed dense


@dataclass
class MethodContext:
    """Everything a method may use; identical for every method of a run (fairness)."""

    backbone: Backbone
    preset: "Preset"
    options: RunOptions
    diffusion: "Diffusion"
    teacher: nn.Module  # the frozen dense model, in eval mode
    batches: Callable[..., Iterator[torch.Tensor]]  # a fresh, identically ordered stream of x0 batches;
    # ``batches(k)`` starts at its batch k
    train_steps: int  # optimizer steps every weight-training method gets
    seed: int
    device: torch.device
    progress: bool = True
    probe: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # fixed (x_t, t, noise) of the data set
    measured: dict[str, float] = field(default_factory=dict)  # what the shared training loop measured, e.g.
    # loss_after_pruning: the probe's loss when the first training step of the cell began
    labels: Callable[..., Iterator[torch.Tensor]] | None = None  # a conditional backbone's labels, batch by batch
    # beside ``batches`` (the shared training loop makes them current; methods need not look)
    continuation: str | None = None  # where the shared loop keeps this cell's training when its budget is
    # spent, and looks for a smaller budget's of the same cell to continue (Method.budgets_share_work); it
    # records the step it continued from as measured["continued_from_step"]
    continuation_dir: str | None = None  # where the shared loop also saves it, so that another process (a
    # later invocation on the same run directory) continues it


class Method(abc.ABC):
    """A pruning method. Subclasses set the class fields and implement :meth:`apply`."""

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str] = ""
    trains_weights: ClassVar[bool] = True
    """Whether the method fine-tunes weights with the run's budget (``ctx.train_steps``). One that does not
    (the dense reference, skip schedules) runs once and serves every budget of a ``--train-steps`` list."""
    in_all: ClassVar[bool] = True
    """Whether ``--methods all`` includes it; controls such as ``scratch`` run when named."""
    points_share_work: ClassVar[bool] = False
    """Whether its operating points on one model and seed share a search that a worker process computes once
    and keeps (DiP-GO's pruner): executors then run those cells one after another on one worker."""
    budgets_share_work: ClassVar[bool] = False
    """Whether its training is one call of the shared loop that does not depend on the budget's length (the
    preset's learning rate must also be constant): a worker that trained a smaller budget of the same cell
    then continues that model instead of training it again from the start (a test shows both are equal)."""
    knob: ClassVar[str | None] = None
    """The :data:`KNOBS` option that sets this method's operating point: ``name@value`` runs it with that
    option at ``value`` (``dipgo@0.3``, ``asp@1:4``); None if it has none."""

    @abc.abstractmethod
    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        """Prune ``state`` (the dense model, or the previous method's output) and return the result."""
