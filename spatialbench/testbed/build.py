"""The pretrained testbed: a small BLIP-2 pretrained here, with and without an object-aware objective.

Three cached builds, made on first use like the tiny checkpoints (and saved with save_pretrained, so every
adapter path applies unchanged): `testbed-vision`, the vision encoder after stage 1, shared by both;
`blip2-pretrained`, stage 2 on captions that name the objects; `blip2-pretrained-spatial`, the same with
the object-aware box loss on the queries (see pretraining.py). Standard initialisation throughout (initializer_range
0.02, query tokens drawn as BLIP-2 draws them), except the ViT's position embeddings, which start from the
2-D sin-cos table of MAE; every build writes its training curve and metrics to pretraining.json.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from . import pretraining as pt
from ..data.vocab import word_tokenizer

log = logging.getLogger(__name__)
IMAGE_SIZE = 64
PATCH = 8
GRID = IMAGE_SIZE // PATCH
# 2400 steps at lr 2e-3: object patches named 43% -> 95% on pretraining validation (600 steps at 1e-3 underfit:
# train and validation loss alike at 0.16), chosen on those scenes alone.
VISION_BUDGET = pt.Budget(train_scenes=4000, validation_scenes=300, steps=2400, lr=2e-3)
CAPTION_BUDGET = pt.Budget(train_scenes=4000, validation_scenes=300, steps=1200, lr=2e-3)
METRICS = "pretraining.json"


def tokenizer():
    return word_tokenizer()


def config(tok):
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, OPTConfig

    vision = Blip2VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                               image_size=IMAGE_SIZE, patch_size=PATCH, initializer_range=0.02)
    qformer = Blip2QFormerConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                 encoder_hidden_size=64, vocab_size=len(tok), initializer_range=0.02)
    text = OPTConfig(hidden_size=64, word_embed_proj_dim=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                     vocab_size=len(tok), max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, init_std=0.02)
    return Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                       num_query_tokens=8, image_token_index=tok.convert_tokens_to_ids("<image>"))


def sincos(grid: int, width: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position table, with a zero row for the class token: [1 + grid², width]."""
    quarter = width // 4
    freq = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    parts = [f(axis.reshape(-1, 1) * freq) for axis in (xs, ys) for f in (torch.sin, torch.cos)]
    return torch.cat([torch.zeros(1, width, dtype=torch.float64), torch.cat(parts, 1)]).float()


def pixels(scenes, processor) -> torch.Tensor:
    from ..data.synthetic import render

    return torch.cat([processor(images=[render(s) for s in scenes[i:i + 256]], return_tensors="pt")["pixel_values"]
                      for i in range(0, len(scenes), 256)])


def processor():
    from transformers import BlipImageProcessor

    return BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def _save_metrics(out: Path, curves: list[pt.Curve], **extra) -> None:
    (out / METRICS).write_text(json.dumps({**extra, "stages": [c.as_dict() for c in curves]}, indent=1))


def pretrain_vision(out: Path, budget: pt.Budget | None = None, seed: int = 0) -> None:
    """Stage 1, dense detection: every patch names the object under its centre (or background) and regresses
    that object's box, so patch features say what is there and where, as a detection-pretrained encoder's do
    (with names alone, an object's patches lose their position: 56% linearly decodable against 90% elsewhere)."""
    from transformers import Blip2VisionModel

    budget = budget or VISION_BUDGET
    cfg = config(tokenizer())
    torch.manual_seed(seed)
    model = Blip2VisionModel(cfg.vision_config)
    with torch.no_grad():
        model.embeddings.position_embedding.copy_(sincos(GRID, cfg.vision_config.hidden_size)[None])
    head = torch.nn.Linear(cfg.vision_config.hidden_size, 1 + len(pt.CATEGORIES) + 4)
    proc = processor()
    data = {}
    for split, n in (("train", budget.train_scenes), ("validation", budget.validation_scenes)):
        scenes = pt.scenes(split, n)
        labels, boxes = zip(*(pt.patch_targets(s, GRID) for s in scenes))
        data[split] = pixels(scenes, proc), torch.stack(labels), torch.stack(boxes)

    def predict(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = head(model(pixel_values=x).last_hidden_state[:, 1:])
        return out[..., :-4], out[..., -4:].sigmoid()

    def losses(split: str, idx: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, boxes = (t[idx] for t in data[split])
        logits, pred = predict(x)
        on = y > 0
        return (F.cross_entropy(logits.flatten(0, 1), y.flatten()), F.l1_loss(pred[on], boxes[on]),
                logits.argmax(-1) == y, on)

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            names, l1, hit, on = losses("validation", slice(None))
        return {"loss": round((names + l1).item(), 4), "box_l1": round(l1.item(), 4),
                "patch_accuracy": round(hit.float().mean().item(), 4),
                "object_patch_accuracy": round(hit[on].float().mean().item(), 4)}

    model.train()
    curve = pt.train_stage("vision encoder", [*model.parameters(), *head.parameters()],
                           lambda idx: sum(losses("train", idx)[:2]), evaluate, budget.train_scenes, budget, seed, log.info)
    model.eval().save_pretrained(out)
    _save_metrics(out, [curve], objective="patch categories and boxes", seed=seed, weights_sha256=pt.digest(model))


def pretrain_captioner(out: Path, objective: str, vision_dir: Path, budget: pt.Budget | None = None,
                       seed: int = 0) -> None:
    """Stage 2: frozen vision encoder; queries, Q-Former, projection and LM learn to caption the scene, and
    under `names+boxes` the queries also have to give every named object's box (pt.BoxHead)."""
    from transformers import Blip2ForConditionalGeneration, Blip2VisionModel

    budget = budget or CAPTION_BUDGET
    tok = tokenizer()
    cfg = config(tok)
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(cfg)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, cfg.qformer_config.initializer_range)  # as BLIP-2 draws them
    model.vision_model.load_state_dict(Blip2VisionModel.from_pretrained(vision_dir).state_dict())
    model.vision_model.requires_grad_(False).eval()
    boxes = pt.BoxHead(cfg.qformer_config.hidden_size, len(pt.CATEGORIES)) if pt.OBJECTIVES[objective] else None
    proc = processor()
    data = {}
    for split, n in (("train", budget.train_scenes), ("validation", budget.validation_scenes)):
        scenes = pt.scenes(split, n)
        with torch.no_grad():  # the encoder is frozen: its features are computed once
            feats = torch.cat([model.vision_model(pixel_values=p).last_hidden_state
                               for p in pixels(scenes, proc).split(256)])
        enc = tok([pt.caption(s) + tok.eos_token for s in scenes], padding=True, return_tensors="pt")
        data[split] = (feats, enc["input_ids"], enc["attention_mask"], *pt.object_targets(scenes))

    def loss(split: str, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats, ids, mask, cats, gold_boxes, present = (t[idx] for t in data[split])
        resampled = _qformer(model, feats)
        prompt = model.language_projection(resampled)
        embeds = torch.cat([prompt, model.get_input_embeddings()(ids)], 1)
        full = torch.cat([torch.ones(prompt.shape[:2], dtype=mask.dtype), mask], 1)
        logits = model.language_model(inputs_embeds=embeds, attention_mask=full).logits
        q = prompt.shape[1]
        pred, gold = logits[:, q - 1:-1], ids.masked_fill(mask == 0, -100)  # position t predicts token t+1
        words = F.cross_entropy(pred.flatten(0, 1), gold.flatten(), ignore_index=-100)
        where = F.l1_loss(boxes(resampled, cats)[present], gold_boxes[present]) if boxes else torch.zeros(())
        return words, where, pred.argmax(-1) == gold

    def evaluate() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            words, where, hit = loss("validation", torch.arange(budget.validation_scenes))
        model.train()
        model.vision_model.eval()
        metrics = {"caption_loss": round(words.item(), 4),
                   "token_accuracy": round(hit[data["validation"][2].bool()].float().mean().item(), 4)}
        return {**metrics, "box_l1": round(where.item(), 4)} if boxes else metrics

    params = [p for p in model.parameters() if p.requires_grad] + (list(boxes.parameters()) if boxes else [])
    model.train()
    model.vision_model.eval()
    weight = pt.OBJECTIVES[objective]

    def objective_loss(idx: torch.Tensor) -> torch.Tensor:
        words, where, _ = loss("train", idx)
        return words + weight * where

    curve = pt.train_stage(f"captioner ({objective})", params, objective_loss, evaluate, budget.train_scenes,
                           budget, seed, log.info)
    vision_curves = json.loads((vision_dir / METRICS).read_text())["stages"]
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    proc.save_pretrained(out)
    _save_metrics(out, [pt.Curve(**c) for c in vision_curves] + [curve], objective=objective, seed=seed,
                  weights_sha256=pt.digest(model))


def _qformer(model, feats: torch.Tensor) -> torch.Tensor:
    queries = model.query_tokens.expand(feats.shape[0], -1, -1)
    mask = torch.ones(feats.shape[:-1], dtype=torch.long)
    return model.qformer(query_embeds=queries, encoder_hidden_states=feats, encoder_attention_mask=mask)[0]


PRETRAINED = "pretrained here"  # what these builds' weights are (`ls models`)


def captioner(objective: str):
    """The build of one stage-2 captioner, over the shared stage-1 encoder's directory."""

    def build(out: Path, vision_dir: Path) -> None:
        pretrain_captioner(out, objective, vision_dir)

    return build
