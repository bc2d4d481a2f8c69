"""Idefics2: SigLIP patches -> connector.modality_projection -> connector.perceiver_resampler (the LLM input).

Extraction points. Idefics2 projects the vision features to the text width *before* resampling, and
the perceiver's output goes into Mistral's `inputs_embeds` at the `<image>` positions unchanged (the
model only casts it to its own dtype, a no-op under a uniform load). So there is no raw resampler output
apart from the LLM input: `projected` and `resampler` are the same tensor, the perceiver output
[64, 4096] for idefics2-8b. Both points are offered, so that runs asking every model for `resampler`
also cover Idefics2; their `resampler_parameters()` are the same too: everything between the vision
features and the prompt, i.e. the modality projection *and* the perceiver. `vision_patches` is the
vision encoder's last hidden state (post layernorm), as the connector reads it.

Images. Image splitting is off by default, whatever the saved processor config says: one view, 64 latents per
image. Idefics2-8b's own default input splits each image into four quarter crops plus the whole image, each
resampled to 64 latents: the card option `image_splitting: true` gives that (5 x 64 = 320 latents, views in
the processor's order, the whole image last), at 5x the vision-encoder work and 5x the vision-feature cache
(5 x 4900 x 1152 per image for idefics2-8b), with 5x the prompt tokens. The processor resizes keeping the aspect ratio, pads the batch to its largest image and
returns `pixel_attention_mask`; the model turns that into a patch mask for the vision encoder and the
perceiver. So `preprocess` returns [B, views x 4, H, W]: per view the three normalised channels and, as a
fourth, the processor's pixel mask. `vision_features` returns the patches on a fixed S x S grid (S = image_size /
patch_size: 70 for idefics2-8b), each image's real patches at its top-left and zeros elsewhere, so one
image's features never depend on the batch it came in; `resample` reads the patch mask back from the
zero rows (a real post-layernorm patch is never exactly zero), crops the grid to the one the model
itself builds for the batch (the same keys in the same order, and no work on 70x70 padding), and runs
the connector with that mask, as the model does. At `vision_patches` the padding patches read as zeros
where the model holds values its mask ignores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from pydantic import Field, StrictBool
from torch import nn

from ..errors import SpatialbenchError
from .base import AdapterOptions, CheckpointAdapter
from .layers import Tap

EXTRACTION_PREFIXES = ("model.vision_model.", "model.connector.")
SPLIT_VIEWS = 5  # with image splitting the processor gives four quarter crops, then the whole image


class Idefics2Parts(nn.Module):
    """The parts of Idefics2Model that produce the visual prompt, with the same names as there."""

    def __init__(self, config):
        from transformers.models.idefics2.modeling_idefics2 import Idefics2Connector, Idefics2VisionTransformer

        super().__init__()
        self.vision_model = Idefics2VisionTransformer._from_config(config.vision_config)
        self.connector = Idefics2Connector(config)
        self.side = config.vision_config.image_size // config.vision_config.patch_size
        self.patch = config.vision_config.patch_size
        self.hidden = config.vision_config.hidden_size

    def vision_features(self, packed: torch.Tensor) -> torch.Tensor:
        # Mirrors Idefics2Model.get_image_features up to the vision encoder (one image per sample).
        pixel_values = packed[:, :3].to(self.vision_model.dtype)
        pixel_mask = packed[:, 3].round().long()
        p = self.patch
        patch_mask = (pixel_mask.unfold(1, p, p).unfold(2, p, p).sum(dim=(-1, -2)) == p * p).bool()
        hidden = self.vision_model(pixel_values=pixel_values, patch_attention_mask=patch_mask).last_hidden_state
        return on_fixed_grid(hidden, patch_mask, self.side)

    def resample(self, features: torch.Tensor) -> torch.Tensor:
        b, _, d = features.shape
        valid = (features.detach() != 0).any(-1).view(b, self.side, self.side)
        rows, cols = valid.any(dim=(0, 2)).nonzero(), valid.any(dim=(0, 1)).nonzero()
        if not len(rows):
            raise SpatialbenchError("resample got no valid patch: every feature row is zero")
        h, w = int(rows.max()) + 1, int(cols.max()) + 1  # the padded grid the model builds for this batch
        context = features.reshape(b, self.side, self.side, d)[:, :h, :w].reshape(b, h * w, d)
        return self.connector(context, attention_mask=valid[:, :h, :w].reshape(b, h * w))


def on_fixed_grid(hidden: torch.Tensor, patch_mask: torch.Tensor, side: int) -> torch.Tensor:
    """Vision tokens of a padded batch grid -> a side x side grid per image, padding patches zeroed."""
    b, h, w = patch_mask.shape
    if h > side or w > side:
        raise SpatialbenchError(f"images give a {h}x{w} patch grid, more than the model's {side}x{side}",
                                fix="use the checkpoint's own image processor settings (longest_edge)")
    grid = hidden.new_zeros(b, side, side, hidden.shape[-1])
    grid[:, :h, :w] = hidden.view(b, h, w, -1).masked_fill(~patch_mask[..., None], 0)
    return grid.view(b, side * side, -1)


@dataclass(frozen=True)
class ViewsTap(Tap):
    """A perceiver layer's latents, [B x views, Q, D] as the connector runs, as one block per view like the prompt."""

    views: int = 1

    def take(self, value) -> torch.Tensor:
        x = super().take(value)
        return x.reshape(-1, self.views * x.shape[1], x.shape[2])


def shape_at(config, point: str) -> tuple[int, int]:
    """Visual-prompt shape from an Idefics2Config alone (no weights needed)."""
    if point == "vision_patches":
        v = config.vision_config
        return ((v.image_size // v.patch_size) ** 2, v.hidden_size)
    return (config.perceiver_config.resampler_n_latents, config.text_config.hidden_size)


class Idefics2Options(AdapterOptions):
    image_splitting: StrictBool = Field(False, description="the model's own default input: four quarter crops and the "
                                  "whole image, 5 x 64 latents, at 5x the vision work and cache")


class Idefics2Adapter(CheckpointAdapter):
    family = "idefics2"

    split_pixels = False  # it splits and pads images after normalising, and packs the pixel mask in
    hf_class = "Idefics2ForConditionalGeneration"
    config_shape = staticmethod(shape_at)
    parts_class = Idefics2Parts
    options_model = Idefics2Options
    prefixes, strip, lm_prefix = EXTRACTION_PREFIXES, "model.", "model.text_model."

    def prepare(self) -> None:
        size, parts = self.processor.size, self.parts
        longest = max(size.get(k) or 0 for k in ("longest_edge", "height", "width")) // parts.patch
        if longest > parts.side:
            raise SpatialbenchError(f"the image processor's longest_edge gives {longest} patches a side, the vision "
                                    f"encoder has positions for {parts.side}", field="checkpoint")
        self.views = SPLIT_VIEWS if self.options.image_splitting else 1

    def shape_at(self, point: str) -> tuple[int, int]:
        tokens, width = super().shape_at(point)  # a layer's shape is its `like` point's
        return (tokens * self.views, width)  # one block per view, in the processor's order

    def layer_taps(self) -> dict[str, Tap]:
        # Every perceiver layer returns the latents the next one reads (the last: what enters the final norm).
        # No vision layers: the encoder runs on the batch's padded patch grid, whose size depends on the batch,
        # so a block's output has no fixed shape (vision_patches is re-gridded by on_fixed_grid for that).
        return {f"resampler.{n}": ViewsTap(f"connector.perceiver_resampler.layers.{n - 1}", "resampler", views=self.views)
                for n in range(1, self.config.perceiver_config.resampler_depth + 1)}

    def fingerprint(self) -> str:
        return super().fingerprint() + ("|split" if self.views > 1 else "")

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        out = self.processor(images=[[im] for im in self.fit(images)], do_image_splitting=self.views > 1,
                             return_tensors="pt")
        pixels = out["pixel_values"]  # [B, views, 3, H, W]
        mask = out["pixel_attention_mask"] if "pixel_attention_mask" in out else torch.ones_like(pixels[:, :, 0])
        packed = torch.cat([pixels, mask[:, :, None].to(pixels.dtype)], dim=2)
        return packed.flatten(1, 2).to(self.device, self.dtype)  # [B, views * 4, H, W]

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b, _, h, w = pixel_values.shape
        features = self.parts.vision_features(pixel_values.reshape(b * self.views, 4, h, w))
        return features.reshape(b, -1, features.shape[-1])

    def resample(self, vision_features: torch.Tensor, text: list[str] | None = None) -> torch.Tensor:
        b, _, d = vision_features.shape
        # The model resamples every view of the batch together, each into its own block of latents.
        prompt = self.parts.resample(vision_features.reshape(b * self.views, -1, d))
        return prompt.reshape(b, -1, prompt.shape[-1])  # the same tensor at "resampler" and "projected"

    def resampler_parameters(self) -> list[nn.Parameter]:
        # The modality projection comes before the perceiver, so it lies between features and prompt at both points.
        return list(self.parts.connector.parameters())

    def reference_prompts(self, pixel_values: torch.Tensor, text: list[str] | None = None) -> dict[str, torch.Tensor]:
        from transformers import Idefics2ForConditionalGeneration

        model = Idefics2ForConditionalGeneration.from_pretrained(self.checkpoint.root, dtype=self.dtype).eval()
        model.to(self.device)
        inner, captured = model.model, {}
        inner.text_model.register_forward_pre_hook(
            lambda m, a, kw: captured.__setitem__("lm", kw["inputs_embeds"]), with_kwargs=True)
        inner.connector.perceiver_resampler.register_forward_hook(lambda m, a, out: captured.__setitem__("pr", out))
        inner.vision_model.register_forward_hook(
            lambda m, a, kw, out: captured.update(vision=out.last_hidden_state, mask=kw["patch_attention_mask"]),
            with_kwargs=True)
        q, b, v = model.config.perceiver_config.resampler_n_latents, pixel_values.shape[0], self.views
        fake = self.tokenizer.convert_tokens_to_ids("<fake_token_around_image>")
        block = [fake, *[model.config.image_token_id] * q]  # each view's latents, between fake tokens
        ids = torch.tensor([block * v + [fake, self.tokenizer.eos_token_id]] * b, device=self.device)
        views = pixel_values.reshape(b, v, 4, *pixel_values.shape[-2:])
        with torch.no_grad(), self.reference_layers(model) as layers:
            model(input_ids=ids, pixel_values=views[:, :, :3], pixel_attention_mask=views[:, :, 3].round().long())
        vision = on_fixed_grid(captured["vision"], captured["mask"], self.parts.side).reshape(b, -1, self.parts.hidden)
        lm = captured["lm"][ids == model.config.image_token_id].reshape(b, v * q, -1)
        return {"projected": lm, "resampler": captured["pr"].reshape(b, v * q, -1), "vision_patches": vision,
                **layers}
