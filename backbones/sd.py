"""Text-to-image latent diffusion, the Stable Diffusion family: diffusers' ``UNet2DConditionModel`` denoising
``AutoencoderKL`` latents, conditioned by cross-attention on a CLIP text encoder's tokens.

``sd15`` is the SD-1.5 UNet layout (``runwayml/stable-diffusion-v1-5``'s ``unet/``, 859.5M params). ``tiny``
is the offline stand-in: 16x16 digits as 4x8x8 latents of a tiny VAE, prompts ``"a handwritten 7"`` through a
tiny ``CLIPTextModel`` (a word-level vocabulary of the prompts' words instead of CLIP's BPE tokenizer; random
weights, frozen, as SD's text encoder is frozen), and a tiny conditional UNet with SD's block pattern. The VAE
and the text encoder are the backbone's frozen parts (``sd-tiny-frozen.pt``); methods prune the UNet only.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from backbones.ddpm_unet import diffusers_weights, unet_blocks
from backbones.uvit import load_state_dict_strict, read_state_dict
from benchmark import conditioning, hookimpl
from benchmark.api import Backbone, BenchmarkError, ChannelPruning, LatentSpace, Prompts
from benchmark.presets import Preset

CONFIGS: dict[str, dict] = {
    # unet/config.json of runwayml/stable-diffusion-v1-5: 859.52M params; 4x64x64 latents, 77 tokens x 768.
    "sd15": dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    ),
    # SD's pattern on 4x8x8 latents: cross-attention at 8x8 and 4x4, none at 2x2; channels multiples of 8.
    "tiny": dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 48, 48),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ),
}
TOKENS = {"sd15": 77, "tiny": 8}
CONTEXT_DIMS = {name: config["cross_attention_dim"] for name, config in CONFIGS.items()}

# The tiny preset's text side: a word-level vocabulary of its prompts and a tiny CLIPTextModel.
PROMPT = "a handwritten {}"
VOCAB = ("<pad>", "<bos>", "<eos>", "a", "handwritten", *map(str, range(10)))
TEXT_CONFIG = dict(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=2, max_position_embeddings=TOKENS["tiny"], pad_token_id=0, bos_token_id=1,
                   eos_token_id=2, projection_dim=32)
# The tiny preset's VAE: 1x16x16 digits <-> 4x8x8 latents (one downsampling).
VAE_CONFIG = dict(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(32, 64),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  layers_per_block=1, norm_num_groups=8, sample_size=16)
FROZEN_FILE = "sd-tiny-frozen.pt"
VAE_STEPS = 4000
VAE_KL_WEIGHT = 1e-5


class TextToImageUNet(nn.Module):
    """``model(x, t) -> eps`` around a diffusers ``UNet2DConditionModel`` kept as attribute ``unet``; the prompt's
    context comes from :func:`benchmark.conditioning.current`, else the empty prompt's (``empty_context``)."""

    def __init__(self, empty_context: torch.Tensor, **unet_config):
        super().__init__()
        from diffusers import UNet2DConditionModel  # imported here: diffusers takes seconds to import

        self.unet = UNet2DConditionModel(**unet_config)
        self.register_buffer("empty_context", empty_context, persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        context = conditioning.current()
        if context is None:
            context = self.empty_context.expand(x.shape[0], -1, -1)
        return self.unet(x, t, encoder_hidden_states=context).sample


def tokenize(label: int) -> list[int]:
    """The tiny vocabulary's token ids of label ``label``'s prompt (-1: the empty prompt), padded to 8."""
    words = [] if label == conditioning.EMPTY_PROMPT else PROMPT.format(label).split()
    ids = [VOCAB.index("<bos>"), *(VOCAB.index(w) for w in words), VOCAB.index("<eos>")]
    return ids + [VOCAB.index("<pad>")] * (TOKENS["tiny"] - len(ids))


class DigitPrompts(Prompts):
    """``"a handwritten {label}"`` for the ten digits, through the frozen tiny text encoder. Its output for the
    eleven possible prompts is computed once: encoding is a table lookup."""

    classes = 10

    def __init__(self, text_state: dict[str, torch.Tensor]):
        from transformers import CLIPTextConfig, CLIPTextModel

        encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
        encoder.load_state_dict(text_state)
        ids = torch.tensor([tokenize(label) for label in range(conditioning.EMPTY_PROMPT, self.classes)])
        with torch.no_grad():
            self.table = encoder.eval()(input_ids=ids).last_hidden_state  # row 0: the empty prompt

    def text(self, label: int) -> str:
        return "" if label == conditioning.EMPTY_PROMPT else PROMPT.format(label)

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table[labels.cpu() + 1]


class VAELatents(LatentSpace):
    """A frozen ``AutoencoderKL``: the posterior's mean times ``scale`` (unit variance on the data), and back."""

    def __init__(self, vae: nn.Module, scale: float, shape: tuple[int, int, int]):
        self.vae, self.scale, self.shape = vae.eval().requires_grad_(False), scale, shape

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.mean * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scale).sample.clamp(-1.0, 1.0)


def build_vae() -> nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def build_text_state(seed: int = 0) -> dict[str, torch.Tensor]:
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).state_dict()


def train_vae(images: torch.Tensor, steps: int = VAE_STEPS, seed: int = 0, progress: bool = True) -> tuple[nn.Module, float, list]:
    """The tiny VAE trained on ``images`` (uint8 digits): L1 + MSE reconstruction and a small KL, AdamW 1e-3
    with cosine decay, batch 64. Returns it, the scale that gives its latents unit variance, and the loss curve."""
    from tqdm.auto import tqdm

    from benchmark.data import batch_stream, to_model_range

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = build_vae()
        optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        stream, curve, window = batch_stream(images, 64, seed), [], []
        for step in tqdm(range(steps), desc="vae", disable=not progress):
            x = next(stream)
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
            loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + VAE_KL_WEIGHT * posterior.kl().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            window.append(loss.item())
            if (step + 1) % 100 == 0:
                curve.append([step + 1, sum(window) / len(window)])
                window.clear()
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(to_model_range(c)).latent_dist.mean for c in images.split(500)])
    return vae, 1.0 / latents.std().item(), curve


class SDBackbone(Backbone):
    name = "sd"
    version = "1"
    description = ("diffusers UNet2DConditionModel + AutoencoderKL + CLIP text encoder, guided (sd15: SD-1.5 "
                   "UNet, 859.5M params; tiny: digits from prompts, 4x8x8 latents)")
    conditional = True
    in_all = False  # the default run is already past its 15 minutes (results/speed); `--backbones sd` runs it

    def build(self, preset: Preset) -> TextToImageUNet:
        if preset.name not in CONFIGS:
            raise BenchmarkError(f"sd has no config for preset {preset.name!r}; available: {', '.join(CONFIGS)}")
        if preset.name == "tiny":
            empty = self.prompts(preset).encode(torch.tensor([conditioning.EMPTY_PROMPT]))
        else:  # the layout only: the text encoder is not loaded at this preset (what it costs is the same)
            empty = torch.zeros(1, TOKENS[preset.name], CONTEXT_DIMS[preset.name])
        return TextToImageUNet(empty, **CONFIGS[preset.name])

    def load_checkpoint(self, model: nn.Module, path: str) -> None:
        """Load a diffusers model directory (or an SD pipeline directory with ``unet/``) or a state-dict file."""
        if os.path.isdir(path):
            path = diffusers_weights(model.unet, path, "unet", lambda key: key.startswith("_"))
        state_dict = {key.removeprefix("unet."): value for key, value in read_state_dict(path).items()}
        load_state_dict_strict(model.unet, state_dict, path)

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """Down blocks, mid block, up blocks: DiP-GO's nine on SD-1.5 (down 0-3, mid, up 0-3)."""
        return unet_blocks(model.unet)

    def kept_dense(self, model: nn.Module) -> list[str]:
        return ["unet.conv_in", "unet.conv_out"]

    def channel_pruning(self, model: nn.Module) -> ChannelPruning:
        """``conv_out`` keeps its width (as on DDPM); attention heads stay whole and equal in number, in
        self- and cross-attention alike; the text context's width is fixed by the frozen encoder."""
        from diffusers.models.attention_processor import Attention

        heads = {
            f"{name}.{projection}": module.heads
            for name, module in model.named_modules()
            if isinstance(module, Attention)
            for projection in ("to_q", "to_k", "to_v")
        }
        return ChannelPruning(kept=["unet.conv_out"], heads=heads)

    def after_channel_pruning(self, model: nn.Module) -> None:
        """diffusers' resamplers check their input against a stored channel count."""
        from backbones.ddpm_unet import DDPMBackbone

        DDPMBackbone.after_channel_pruning(self, model)

    def example_inputs(self, preset: Preset, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch`` latents of the preset's layout (the harness doubles them for guidance's two branches)."""
        config = CONFIGS.get(preset.name, {})
        size = config.get("sample_size", preset.image_size)
        x = torch.randn(batch, config.get("in_channels", preset.channels), size, size)
        return x, torch.full((batch,), 500, dtype=torch.long)

    def latent_space(self, preset: Preset) -> LatentSpace:
        if preset.name != "tiny":
            raise _not_loaded(preset)
        frozen = _frozen_parts(str(_frozen_path()))
        config = CONFIGS["tiny"]
        vae = build_vae()
        vae.load_state_dict(frozen["vae"])
        return VAELatents(vae, frozen["scale"], (config["in_channels"], config["sample_size"], config["sample_size"]))

    def prompts(self, preset: Preset) -> Prompts:
        if preset.name != "tiny":
            raise _not_loaded(preset)
        return _digit_prompts(str(_frozen_path()))

    def prepare(self, preset: Preset, device: torch.device, progress: bool = True) -> None:
        """At ``tiny``: train the VAE and draw the text encoder unless a frozen-parts file exists."""
        if preset.name != "tiny" or _frozen_path(required=False) is not None:
            return
        from benchmark.checkpoints import sha256_file
        from benchmark.data import cache_dir, load_dataset

        path = cache_dir() / "dense" / FROZEN_FILE
        vae, scale, curve = train_vae(load_dataset(preset.dataset), progress=progress)
        write_frozen_parts(path, vae, scale, build_text_state(), curve)
        print(f"trained the tiny VAE ({VAE_STEPS} steps) into {path} (sha256 {sha256_file(path)[:12]})")


def write_frozen_parts(path: Path, vae: nn.Module, scale: float, text_state: dict, curve: list) -> None:
    from benchmark.checkpoints import sha256_file

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"vae": vae.state_dict(), "scale": scale, "text": text_state}, path)
    meta = {"sha256": sha256_file(path),"vae": VAE_CONFIG, "vae_steps": VAE_STEPS, "vae_kl_weight": VAE_KL_WEIGHT, "scale": scale,
            "vae_loss_curve": curve, "text": TEXT_CONFIG, "text_weights": "random (torch seed 0), frozen",
            "torch": torch.__version__}
    path.with_name(path.name + ".json").write_text(json.dumps(meta, indent=2) + "\n")


def _frozen_path(required: bool = True) -> Path | None:
    from benchmark.checkpoints import SHIPPED_WEIGHTS_DIR
    from benchmark.data import cache_dir

    for path in (SHIPPED_WEIGHTS_DIR / FROZEN_FILE, cache_dir() / "dense" / FROZEN_FILE):
        if path.is_file():
            return path
    if required:
        raise BenchmarkError(f"the sd backbone's VAE and text encoder ({FROZEN_FILE}) are missing; make them with "
                             "`python -m benchmark train-dense --backbone sd --preset tiny`")
    return None


@functools.lru_cache(maxsize=2)
def _frozen_parts(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@functools.lru_cache(maxsize=2)
def _digit_prompts(path: str) -> DigitPrompts:
    return DigitPrompts(_frozen_parts(path)["text"])


def _not_loaded(preset: Preset) -> BenchmarkError:
    return BenchmarkError(
        f"the sd backbone at preset {preset.name!r} samples and trains only with an SD directory's vae/, "
        "text_encoder/ and tokenizer/, which this suite does not load yet; this preset serves `latency` "
        "and checkpoint checks"
    )


@hookimpl
def register_backbones(register):
    register(SDBackbone())
