"""Pretrain the built-in tiny CLIP contrastively on procedurally generated captioned images.

    python -m gopro_prompts.tools.pretrain_tiny_clip                 # writes assets/tiny_clip_synthetic.pt
    python -m gopro_prompts.tools.pretrain_tiny_clip --steps 200 --output /tmp/t.pt

(from the root of a clone, or anywhere once the package is installed).

The model is the ``tiny`` architecture of ``trainers/clip_helpers.py`` (the
``clip`` package's CLIP class: a 3-layer ViT on 32x32 images, a 3-layer text
transformer, 64-d embeddings) and the text side uses the real CLIP BPE
tokenizer, so prompt learners see class names tokenized as usual.  The images
and captions come from ``datasets/synthetic_world.py``: objects (colour x shape
x texture) and texture swatches in four styles, each with a caption that names
some of its concepts and its style in one of several templates.

Loss: CLIP's symmetric contrastive loss, except that a caption counts as a
positive for *every* image of the batch it describes correctly (a caption names
a few attributes, and with a small concept vocabulary several images of a batch
share them; treating those as negatives would teach the model to contradict
itself).

Deterministic per seed for a given ``--threads`` (default 1) and torch build.
On 2 CPU cores the default schedule (1200 steps of 128) takes about 5 to 10
minutes: one core trains while the other renders the next batch (one intra-op
thread each, which also keeps a busy machine from stalling it).  The checkpoint is a plain CLIP state dict (OpenAI key names) in fp16:
``load_clip("tiny-synthetic")`` or ``MODEL.BACKBONE.PATH`` loads it like any
CLIP file.  Token-embedding rows of words no caption uses are zero (they were
never trained); a sidecar ``.json`` records the settings and the zero-shot
accuracies measured on freshly rendered images.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from gopro_prompts.datasets import synthetic_world as world
from gopro_prompts.trainers.clip_helpers import (
    BUILTIN_ARCHS, BUILTIN_CHECKPOINTS, TextEncoder, build_builtin_clip, tokenize,
)

DEFAULT_OUTPUT = BUILTIN_CHECKPOINTS["tiny-synthetic"][0]
#: CLIP's image normalisation (the offline default's INPUT.PIXEL_MEAN / PIXEL_STD).
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
#: The zero-shot template of the synthetic datasets (ZeroshotCLIP's default template).
TEMPLATE = "a photo of a {}."
#: Attributes a caption may name, in the order of the code columns.
ATTRIBUTES = ("kind", "colour", "shape", "texture", "style", "size")
EVAL_SEED = 20240601


@dataclass
class PretrainConfig:
    """Settings of one pretraining run (the defaults make the committed checkpoint)."""

    seed: int = 0
    steps: int = 1200
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 60
    pattern_fraction: float = 0.2
    threads: int = 1  # per thread of work: training, and rendering the next batch beside it
    log_every: int = 50
    eval_every: int = 0  # > 0: a quick zero-shot check every this many steps (for tuning)
    eval_per_class: int = 20


@dataclass
class PretrainResult:
    state_dict: Dict[str, torch.Tensor]
    losses: List[float] = field(default_factory=list)
    zero_shot: Dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


# ----------------------------------------------------------------------------
# text side: a compact embedding table over the words captions can use
# ----------------------------------------------------------------------------
class CaptionTokens:
    """CLIP-tokenizes captions (cached) and maps token ids to rows of a compact table."""

    def __init__(self, vocab_size: int):
        from gopro_prompts.trainers.clip_helpers import _tokenizer

        tok = _tokenizer()
        ids = {tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]}
        for word in world.caption_lexicon():
            ids.update(tok.encode(word))
        # id 0 is the padding after the end-of-text token: it needs a row, but the
        # causal mask keeps it from ever influencing a feature, so it is not saved
        self.saved_ids = torch.tensor(sorted(ids - {0}))
        self.ids = torch.tensor(sorted(ids | {0}))
        self.remap = torch.full((vocab_size,), -1, dtype=torch.long)
        self.remap[self.ids] = torch.arange(len(self.ids))
        self._cache: Dict[str, torch.Tensor] = {}

    def __call__(self, captions: List[str]):
        """Token ids [N, L] (cut after the longest end-of-text) and their compact rows."""
        missing = [c for c in dict.fromkeys(captions) if c not in self._cache]
        if missing:
            for c, row in zip(missing, tokenize(missing)):
                self._cache[c] = row
        ids = torch.stack([self._cache[c] for c in captions])
        length = int(ids.argmax(-1).max()) + 1
        ids = ids[:, :length]
        rows = self.remap[ids]
        if (rows < 0).any():
            raise ValueError("a caption uses a word missing from synthetic_world.caption_lexicon(); add it there")
        return ids, rows


def encode_text(text_encoder: TextEncoder, table: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor):
    return text_encoder(table[rows], ids)


# ----------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------
def _codes(scenes, sizes):
    """Integer codes [N, len(ATTRIBUTES)] of the scenes' attributes."""
    vocab = {
        "kind": world.KINDS, "colour": tuple(world.COLOURS), "shape": world.SHAPES + (None,),
        "texture": world.TEXTURES, "style": world.STYLES, "size": world.SIZE_WORDS + (None,),
    }
    rows = []
    for s, z in zip(scenes, sizes):
        values = {"kind": s.kind, "colour": s.colour, "shape": s.shape, "texture": s.texture,
                  "style": s.style, "size": z}
        rows.append([vocab[a].index(values[a]) for a in ATTRIBUTES])
    return torch.tensor(rows)


def sample_batch(n: int, gen: torch.Generator, pattern_fraction: float):
    """Images [n, 3, 32, 32] (uint8), captions, and which caption describes which image [n, n]."""
    scenes = world.sample_scenes(n, gen, pattern_fraction)
    images, sizes = world.render_scenes(scenes, gen, return_sizes=True)
    captions, named = [], []
    for s, z in zip(scenes, sizes):
        text, attrs = world.caption(s, gen, size=z)
        captions.append(text)
        named.append([a in attrs for a in ATTRIBUTES])
    codes = _codes(scenes, sizes)
    named = torch.tensor(named)
    # caption j describes image i when every attribute it names has image i's value
    same = codes[:, None, :] == codes[None, :, :]
    match = (same | ~named[None, :, :]).all(-1)
    flip = torch.rand(n, generator=gen) < 0.5
    images = torch.where(flip.view(n, 1, 1, 1), images.flip(-1), images)
    return images, captions, match


def multi_positive_clip_loss(logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss with every correct (image, caption) pair a positive."""
    target = match.float()
    i2t = -(target / target.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    t2i = -(target / target.sum(0, keepdim=True) * F.log_softmax(logits, 0)).sum(0).mean()
    return (i2t + t2i) / 2


# ----------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------
def _param_groups(model: nn.Module, table: nn.Parameter, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if name == "token_embedding.weight":
            continue
        (decay if p.dim() >= 2 and "embedding" not in name and name != "visual.proj" else no_decay).append(p)
    no_decay.append(table)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain(cfg: PretrainConfig = PretrainConfig(), log=print) -> PretrainResult:
    """Run one pretraining; returns the fp16-rounded CLIP state dict and the loss curve."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _pretrain(cfg, log)
    finally:
        torch.set_num_threads(threads)


def _pretrain(cfg: PretrainConfig, log) -> PretrainResult:
    start = time.time()
    model = build_builtin_clip("tiny", seed=cfg.seed).train()
    for p in model.parameters():
        p.requires_grad_(True)
    model.token_embedding.weight.requires_grad_(False)
    tokens = CaptionTokens(model.token_embedding.num_embeddings)
    table = nn.Parameter(model.token_embedding.weight.detach()[tokens.ids].clone())
    text_encoder = TextEncoder(model)
    groups = _param_groups(model, table, cfg.weight_decay)
    optim = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step):
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))

    gen = torch.Generator().manual_seed(cfg.seed)
    resolution = model.visual.input_resolution

    def next_batch():
        images, captions, match = sample_batch(cfg.batch_size, gen, cfg.pattern_fraction)
        return world.to_model_input(images, resolution, PIXEL_MEAN, PIXEL_STD), captions, match

    losses = []
    # the next batch is rendered in a second thread while this one trains (only that
    # thread uses ``gen``, in order, so the data stay deterministic)
    with ThreadPoolExecutor(max_workers=1) as renderer:
        pending = renderer.submit(next_batch)
        for step in range(cfg.steps):
            x, captions, match = pending.result()
            if step + 1 < cfg.steps:
                pending = renderer.submit(next_batch)
            loss = _train_step(model, text_encoder, table, tokens, optim, lr_at(step), x, captions, match)
            losses.append(loss)
            if log and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
                recent = losses[-cfg.log_every:]
                log(f"step [{step + 1}/{cfg.steps}] loss {sum(recent) / len(recent):.4f} "
                    f"lr {lr_at(step):.2e} scale {model.logit_scale.exp().item():.1f} "
                    f"elapsed {time.time() - start:.0f}s")
            if log and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                log(f"  zero-shot at step {step + 1}: {_quick_eval(model, text_encoder, table, tokens)}")

    with torch.no_grad():
        weight = torch.zeros_like(model.token_embedding.weight)
        weight[tokens.saved_ids] = table.detach()[tokens.remap[tokens.saved_ids]]
        model.token_embedding.weight.copy_(weight)
    state = {k: (v.detach().half() if v.is_floating_point() else v.detach()).clone()
             for k, v in model.state_dict().items()}
    return PretrainResult(state_dict=state, losses=losses, seconds=time.time() - start)


def _train_step(model, text_encoder, table, tokens, optim, lr, x, captions, match) -> float:
    ids, rows = tokens(captions)
    img = F.normalize(model.encode_image(x), dim=-1)
    txt = F.normalize(encode_text(text_encoder, table, ids, rows), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.t()
    loss = multi_positive_clip_loss(logits, match)
    for group in optim.param_groups:
        group["lr"] = lr
    optim.zero_grad(set_to_none=True)
    loss.backward()
    optim.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return loss.item()


@torch.no_grad()
def _quick_eval(model, text_encoder, table, tokens):
    """Zero-shot accuracy on base / new objects and patterns during training (5 images per class)."""
    model.eval()
    objects = world.object_classnames()
    half = math.ceil(len(objects) / 2)
    out = {}
    for key, names, styles in (("base", objects[:half], ["photo"]), ("new", objects[half:], ["photo"]),
                               ("sketch", objects, ["sketch"]), ("patterns", world.pattern_classnames(), ["photo"])):
        ids, rows = tokens([TEMPLATE.format(c) for c in names])
        text = F.normalize(encode_text(text_encoder, table, ids, rows), dim=-1)
        out[key] = round(_accuracy(model, text, names, styles, 5), 1)
    model.train()
    return out


# ----------------------------------------------------------------------------
# zero-shot evaluation on freshly rendered images
# ----------------------------------------------------------------------------
def model_from_state(state: Dict[str, torch.Tensor]) -> nn.Module:
    """A float32 CLIP built from a state dict, as ``load_clip`` builds it."""
    from gopro_prompts.trainers.clip_helpers import _clip

    return _clip().model.build_model({k: v.clone() for k, v in state.items()}).float().eval()


@torch.no_grad()
def zero_shot_accuracy(model: nn.Module, classnames: List[str], styles, per_class: int,
                       seed: int = EVAL_SEED, camera: str = "none") -> float:
    """Top-1 accuracy (%) of ``TEMPLATE`` prompts on ``per_class`` rendered images per class and
    style, seen through ``camera`` (``"faded"``: the synthetic datasets' camera)."""
    text = F.normalize(model.encode_text(tokenize([TEMPLATE.format(c) for c in classnames])).float(), dim=-1)
    return _accuracy(model, text, classnames, styles, per_class, seed, camera)


def _accuracy(model, text_features, classnames, styles, per_class, seed=EVAL_SEED, camera="none"):
    gen = torch.Generator().manual_seed(seed)
    scenes, labels = [], []
    for label, name in enumerate(classnames):
        for style in styles:
            for _ in range(per_class):
                texture = world.TEXTURES[int(torch.randint(len(world.TEXTURES), (1,), generator=gen))]
                scenes.append(world.scene_of_class(name, style, texture))
                labels.append(label)
    images = world.render_scenes(scenes, gen, camera=camera)
    x = world.to_model_input(images, model.visual.input_resolution, PIXEL_MEAN, PIXEL_STD)
    feats = torch.cat([F.normalize(model.encode_image(chunk).float(), dim=-1) for chunk in x.split(512)])
    pred = (feats @ text_features.t()).argmax(-1)
    return 100.0 * float((pred == torch.tensor(labels)).float().mean())


def evaluate(model: nn.Module, per_class: int = 20) -> Dict[str, float]:
    """Zero-shot accuracies of the benchmark protocols, as the datasets show them (``faded``
    camera), plus base / new on the pretraining distribution (no camera); chance levels alongside."""
    objects = world.object_classnames()
    half = math.ceil(len(objects) / 2)
    patterns = world.pattern_classnames()
    from gopro_prompts.datasets.synthetic import SHAPES_DEMO_CLASSES

    def acc(names, styles, per, camera="faded"):
        return zero_shot_accuracy(model, names, styles, per, camera=camera)

    res = {
        "pretraining_objects_base_photo": acc(objects[:half], ["photo"], per_class, camera="none"),
        "pretraining_objects_new_photo": acc(objects[half:], ["photo"], per_class, camera="none"),
        "objects_base_photo": acc(objects[:half], ["photo"], per_class),
        "objects_new_photo": acc(objects[half:], ["photo"], per_class),
        "chance_objects_half": 100.0 / (len(objects) - half),
    }
    for style in world.STYLES:
        res[f"objects_all_{style}"] = acc(objects, [style], per_class // 2)
    res["chance_objects_all"] = 100.0 / len(objects)
    res["patterns_photo"] = acc(patterns, ["photo"], per_class)
    res["chance_patterns"] = 100.0 / len(patterns)
    res["shapes_demo"] = acc(SHAPES_DEMO_CLASSES, ["photo", "sketch", "cartoon"], per_class // 2)
    res["chance_shapes_demo"] = 100.0 / len(SHAPES_DEMO_CLASSES)
    return {k: round(v, 2) for k, v in res.items()}


def save(state: Dict[str, torch.Tensor], path: str, meta: Optional[dict] = None) -> None:
    """Write the state dict (and ``<path>.json`` with ``meta``); the folder is created."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    if meta is not None:
        with open(os.path.splitext(path)[0] + ".json", "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.write("\n")


def _print_zero_shot(results):
    print("Zero-shot accuracy (%), template " + repr(TEMPLATE) + ":")
    for k, v in results.items():
        print(f"  {k}: {v:.1f}")


def _eval_only(path, per_class):
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found: train it first (python -m gopro_prompts.tools.pretrain_tiny_clip)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    with torch.random.fork_rng(devices=[]):
        results = evaluate(model_from_state(state), per_class)
    _print_zero_shot(results)
    meta_path = os.path.splitext(path)[0] + ".json"
    meta = {}
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    meta["zero_shot"] = results
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    return 0


def main(argv=None):
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="checkpoint path (default: %(default)s)")
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                            help=f"default: {value}")
    parser.add_argument("--no-eval", action="store_true", help="skip the zero-shot evaluation")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the checkpoint at --output and update its .json (no training)")
    args = parser.parse_args(argv)
    if args.eval_only:
        return _eval_only(args.output, args.eval_per_class)
    cfg = PretrainConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    if cfg.steps < 1 or cfg.batch_size < 2:
        parser.error("--steps must be >= 1 and --batch-size >= 2")
    arch = BUILTIN_ARCHS["tiny"]
    print(f"Pretraining the tiny CLIP ({arch['vision_layers']}-layer ViT, width {arch['vision_width']}; "
          f"{arch['transformer_layers']}-layer text, width {arch['transformer_width']}) for {cfg.steps} steps "
          f"of {cfg.batch_size} (seed {cfg.seed}, {cfg.threads} threads)")
    result = pretrain(cfg)
    meta = {"config": asdict(cfg), "seconds": round(result.seconds, 1), "torch": torch.__version__,
            "final_loss": round(sum(result.losses[-50:]) / len(result.losses[-50:]), 4),
            "remake": "python -m gopro_prompts.tools.pretrain_tiny_clip"}
    if not args.no_eval:
        with torch.random.fork_rng(devices=[]):
            meta["zero_shot"] = evaluate(model_from_state(result.state_dict), cfg.eval_per_class)
        _print_zero_shot(meta["zero_shot"])
    save(result.state_dict, args.output, meta)
    size = os.path.getsize(args.output) / 2 ** 20
    print(f"Saved {args.output} ({size:.1f} MiB) in {result.seconds:.0f}s of training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
