"""open_clip backbones (``MODEL.BACKBONE.NAME open_clip:...``) on a small random open_clip model.

The model is built here (no download): an open_clip ``CLIP`` of the tiny CLIP's sizes with
random weights, saved as an open_clip ``local-dir:`` folder (its ``open_clip_config.json``
and weights) and as a plain checkpoint of a registered architecture (``MODEL.BACKBONE.PATH``).
"""
from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import torch

open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is a test requirement (requirements.txt)")

from gopro_prompts.trainers import open_clip_backbone as ocb  # noqa: E402
from gopro_prompts.trainers.clip_helpers import (  # noqa: E402
    ImageEncoder,
    Precision,
    TextEncoder,
    encode_class_texts,
    eot_positions,
    load_clip,
    supports_shared_prefix,
    tokenize,
    truncation_length,
)
from gopro_prompts.user_errors import UserError  # noqa: E402
from helpers import REPO, clip_trainers, offline_trainer, one_step_run  # noqa: E402

ARCH = "GoproTinyOpenClip"
#: the tiny CLIP's sizes (clip_helpers.BUILTIN_ARCHS["tiny"]) in open_clip's config format, but a text
#: context of 40 tokens instead of CLIP's 77: every trainer must read it from the model
CONTEXT = 40
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 128, "head_width": 64, "patch_size": 8},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 3},
}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
TEXTS = ["a photo of a dog.", "a photo of a big red fire engine, seen from the side.", "X X X X cat."]


def build(model_cfg=MODEL_CFG, seed=0):
    """A random open_clip CLIP of ``model_cfg`` (deterministic per seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(embed_dim=model_cfg["embed_dim"],
                               vision_cfg=open_clip.CLIPVisionCfg(**model_cfg["vision_cfg"]),
                               text_cfg=open_clip.CLIPTextCfg(**model_cfg["text_cfg"]))
    return model.eval()


def write_dir(folder, model, model_cfg=MODEL_CFG, mean=CLIP_MEAN, std=CLIP_STD):
    """An open_clip ``local-dir:`` model folder: its config and weights."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": mean, "std": std}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def reference():
    return build()


@pytest.fixture(scope="module")
def model_dir(reference, tmp_path_factory):
    return write_dir(tmp_path_factory.mktemp("open_clip") / "tiny", reference)


@pytest.fixture(scope="module")
def name(model_dir):
    return f"open_clip:local-dir:{model_dir}"


@pytest.fixture(scope="module")
def adapted(name):
    return load_clip(name)


@pytest.fixture(scope="module")
def registered_arch(tmp_path_factory):
    """``ARCH`` added to open_clip's model configs (as a user adds a config of their own)."""
    folder = tmp_path_factory.mktemp("configs")
    (folder / f"{ARCH}.json").write_text(json.dumps(MODEL_CFG))
    open_clip.add_model_config(folder)
    return ARCH


# ------------------------------------------------------------------ the encoders equal open_clip's
def test_text_encoder_equals_open_clips_encode_text(reference, adapted):
    tokens = tokenize(TEXTS, CONTEXT)
    expected = reference.encode_text(tokens)
    assert torch.allclose(adapted.encode_text(tokens), expected, atol=1e-5)
    n = truncation_length(tokens)  # our encoder on embeddings cut after the longest end-of-text token
    ours = TextEncoder(adapted)(adapted.token_embedding(tokens[:, :n]), tokens)
    assert torch.allclose(ours, expected, atol=1e-5)


def test_shared_prefix_encoding_runs_on_open_clip_blocks(adapted):
    """CoCoOp / GOPro encode a per-image prefix once: exact on open_clip's plain causal blocks too."""
    encoder = TextEncoder(adapted)
    assert supports_shared_prefix(encoder)
    tokens = tokenize(["X X X X dog.", "X X X X big red fire engine."], CONTEXT)
    n = truncation_length(tokens)
    embedded = adapted.token_embedding(tokens[:, :n])
    ctx = torch.randn(2, 4, embedded.shape[-1])  # two images' contexts
    prefixes = torch.cat([embedded[:1, :1].expand(2, 1, -1), ctx], dim=1)
    shared = encoder(prefixes, tokens, suffix=embedded[:, 5:])
    for b in range(2):
        full = torch.cat([prefixes[b].expand(2, -1, -1), embedded[:, 5:]], dim=1)
        assert torch.allclose(shared[b], encoder(full, tokens), atol=1e-5)


def test_image_encoder_equals_open_clips_encode_image(reference, adapted):
    images = torch.randn(3, 3, 32, 32)
    expected = reference.encode_image(images)
    assert torch.allclose(adapted.encode_image(images), expected, atol=1e-5)
    feats, tokens = ImageEncoder(adapted)(images, return_block_tokens=True)
    assert torch.allclose(feats, expected, atol=1e-5)
    assert tokens.shape == (3, 3, 17, 128)  # layers, images, CLS + 16 patches, width
    # open_clip's own intermediates: the same block outputs (its patch tokens, the class token left out)
    inter = reference.visual.forward_intermediates(images, indices=3, intermediates_only=False,
                                                   output_fmt="NLC")["image_intermediates"]
    assert torch.allclose(torch.stack(inter), tokens[:, :, 1:], atol=1e-5)


def test_sequence_first_wrapper_matches_batch_first_and_sequence_first_blocks():
    """open_clip's blocks run batch-first (3.x) or sequence-first (older releases): both give the same."""
    torch.manual_seed(0)
    first = open_clip.transformer.ResidualAttentionBlock(16, 2, batch_first=True).eval()
    second = open_clip.transformer.ResidualAttentionBlock(16, 2, batch_first=False).eval()
    second.load_state_dict(first.state_dict())
    mask = torch.full((6, 6), float("-inf")).triu(1)
    x = torch.randn(5, 3, 16)  # [L, N, D]
    a = ocb.SequenceFirstBlock(first, mask)(x)
    b = ocb.SequenceFirstBlock(second, mask)(x)
    expected = first(x.transpose(0, 1), attn_mask=mask[:5, :5]).transpose(0, 1)
    assert torch.allclose(a, expected, atol=1e-6) and torch.allclose(b, expected, atol=1e-6)


def test_eot_position_is_found_with_both_tokenizers(model_dir):
    ours = tokenize(TEXTS, CONTEXT)
    theirs = open_clip.get_tokenizer(f"local-dir:{model_dir}")(TEXTS)
    assert torch.equal(ours, theirs)
    eot = open_clip.tokenizer.SimpleTokenizer().eot_token_id
    expected = torch.tensor([row.tolist().index(eot) for row in theirs])
    assert torch.equal(eot_positions(theirs), expected) and torch.equal(eot_positions(ours), expected)
    assert expected.tolist() == [len(open_clip.tokenizer.SimpleTokenizer().encode(t)) + 1 for t in TEXTS]


def test_dimensions_are_read_from_the_model(adapted):
    assert adapted.context_length == CONTEXT and adapted.visual.input_resolution == 32
    assert adapted.visual.output_dim == 64 and adapted.transformer.width == 64
    assert len(adapted.visual.transformer.resblocks) == 3 and adapted.visual.conv1.weight.shape[0] == 128
    assert not any(p.requires_grad for p in adapted.parameters())


def test_fp16_layout_runs_and_stays_close(name):
    """PREC fp16: matmul weights in half, open_clip's LayerNorms computed in fp32 (CPU half kernels)."""
    full, half = load_clip(name), load_clip(name)
    Precision("fp16", "cpu").apply(half)  # on the CPU PREC fp16 keeps fp32 weights ...
    assert half.dtype == torch.float32
    half.convert_to_fp16()  # ... so apply the CUDA layout directly
    assert half.dtype == torch.float16 and half.text_projection.dtype == torch.float16
    assert half.token_embedding.weight.dtype == torch.float32  # as CLIP's convert_weights leaves it
    tokens = tokenize(TEXTS, CONTEXT)
    out = half.encode_text(tokens)
    assert out.dtype == torch.float16
    assert torch.allclose(out.float(), full.encode_text(tokens), atol=2e-2, rtol=2e-2)
    images = torch.randn(2, 3, 32, 32)
    assert torch.allclose(half.encode_image(images).float(), full.encode_image(images), atol=2e-2, rtol=2e-2)
    # the frozen fp32 teachers (KgCoOp, ProGrad, PromptSRC, VPT) upcast a copy of the half text tower
    teacher = encode_class_texts(half, ["dog", "sea lion"], ["a photo of a {}."], fp32=True)
    assert teacher.dtype == torch.float32 and half.text_projection.dtype == torch.float16
    assert torch.allclose(teacher, encode_class_texts(full, ["dog", "sea lion"], ["a photo of a {}."]), atol=2e-2)


# ------------------------------------------------------------------ every trainer, unchanged
@pytest.mark.parametrize("trainer_name", clip_trainers())
def test_every_trainer_takes_one_step_on_an_open_clip_model(trainer_name, name, synthetic_root, tmp_path):
    trainer = offline_trainer(trainer_name, synthetic_root, tmp_path / "run", "MODEL.BACKBONE.NAME", name,
                              "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.WARMUP_EPOCH", "0")
    assert any(isinstance(m, open_clip.transformer.ResidualAttentionBlock) for m in trainer.model.modules())
    tokenized = [b for n, b in trainer.model.named_buffers() if n.endswith("tokenized_prompts")]
    assert all(t.shape[-1] == CONTEXT for t in tokenized)  # prompts tokenized to the model's context
    assert tokenized or trainer_name.startswith("Zeroshot"), "no tokenized prompts found"
    images = next(iter(trainer.test_loader))["img"][:2]
    if trainer.model.learnable_module() is None:
        with torch.no_grad():
            assert torch.isfinite(trainer.model(images)).all()
        return
    run = one_step_run(trainer, tmp_path / "checkpoint")
    assert torch.isfinite(torch.tensor(run["summary"]["loss"]))
    moved = [n for n, p in trainer.model.named_parameters() if p.requires_grad
             and not torch.equal(p.detach(), run["before"][n])]
    assert moved, f"{trainer_name}: the step moved no learnable parameter"


def test_train_py_runs_on_an_open_clip_model(name, synthetic_root, tmp_path):
    """A user's command line, nothing else: ``python train.py ... MODEL.BACKBONE.NAME open_clip:...``."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--trainer", "CoOp", "--output-dir", str(out),
         "--dataset-config-file", str(REPO / "configs/datasets/synthetic_shapes.yaml"),
         "--root", synthetic_root, "DATASET.NUM_SHOTS", "1", "OPTIM.MAX_EPOCH", "1",
         "MODEL.BACKBONE.NAME", name, "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "Loaded open_clip local-dir:" in log and "* accuracy:" in log


# ------------------------------------------------------------------ offline weights: MODEL.BACKBONE.PATH
def test_backbone_path_loads_a_local_open_clip_checkpoint(registered_arch, reference, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": reference.state_dict()}, path)  # as open_clip's training saves it
    model = load_clip(f"open_clip:{registered_arch}", str(path))
    tokens = tokenize(TEXTS, CONTEXT)
    assert torch.allclose(model.encode_text(tokens), reference.encode_text(tokens), atol=1e-5)
    # the pretrained tag, if given, only documents where the weights came from
    tagged = load_clip(f"open_clip:{registered_arch}/my_own_run", str(path))
    assert torch.equal(tagged.text_projection, model.text_projection)


def test_a_checkpoint_of_another_architecture_is_one_line(registered_arch, tmp_path):
    other = dict(MODEL_CFG, embed_dim=32)
    path = tmp_path / "other.pt"
    torch.save(build(other).state_dict(), path)
    with pytest.raises(UserError, match=r"could not load .*other\.pt as open_clip GoproTinyOpenClip weights"):
        load_clip(f"open_clip:{registered_arch}", str(path))


class _Payload:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_checkpoint_is_never_unpickled(registered_arch, tmp_path, capsys):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": _Payload()}, protocol=2))
    with pytest.raises(UserError, match="could not load"):
        load_clip(f"open_clip:{registered_arch}", str(path))
    assert "this ran" not in capsys.readouterr().out


# ------------------------------------------------------------------ what is refused, in one line
@pytest.mark.parametrize("spec, reason", [
    ("ViT-B-16-SigLIP", "SigLIP"),
    ("coca_ViT-B-32", "CoCa"),
    ("RN50", "ResNet"),
    ("xlm-roberta-base-ViT-B-32", "Hugging Face"),
])
def test_architectures_without_clips_towers_are_refused_before_any_download(spec, reason, monkeypatch):
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("create_model was called"))
    with pytest.raises(UserError, match=f"is not supported: .*{reason}.*only models with CLIP's architecture"):
        load_clip(f"open_clip:{spec}/whatever")


@pytest.mark.parametrize("text_cfg, reason", [
    ({"no_causal_mask": True}, "its text tower is not causal"),
    ({"pool_type": "last"}, "its text tower is read at 'last'"),
    ({"tokenizer_kwargs": {"clean": "canonicalize"}}, "its tokenizer cleans or encodes text differently"),
])
def test_text_towers_unlike_clips_are_refused(text_cfg, reason, tmp_path):
    model_cfg = {**MODEL_CFG, "text_cfg": {**MODEL_CFG["text_cfg"], **text_cfg}}
    tokenizer_free = {**MODEL_CFG, "text_cfg": {k: v for k, v in model_cfg["text_cfg"].items() if k != "tokenizer_kwargs"}}
    folder = write_dir(tmp_path / "m", build(tokenizer_free), model_cfg)
    with pytest.raises(UserError, match=f"is not supported: {reason}"):
        load_clip(f"open_clip:local-dir:{folder}")


def test_names_without_weights_or_with_unknown_parts_are_one_line(monkeypatch):
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("create_model was called"))
    with pytest.raises(UserError, match=r"names no weights: add a pretrained tag .*laion2b_s34b_b88k"):
        load_clip("open_clip:ViT-B-16")
    with pytest.raises(UserError, match=r"no pretrained tag 'laion9b' for ViT-B-16: use one of .*laion2b_s34b_b88k"):
        load_clip("open_clip:ViT-B-16/laion9b")
    with pytest.raises(UserError, match=r"no architecture 'ViT-B-61' \(did you mean .*ViT-B-16"):
        load_clip("open_clip:ViT-B-61/openai")
    with pytest.raises(UserError, match="trained with QuickGELU: use open_clip:ViT-B-16-quickgelu/openai"):
        load_clip("open_clip:ViT-B-16/openai")
    with pytest.raises(UserError, match="names no model"):
        load_clip("open_clip:")


def test_a_failed_download_names_the_offline_way(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nmore detail")
    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(UserError, match=r"could not load open_clip ViT-B-16/laion2b_s34b_b88k \(We couldn't "
                                        r"connect .*\): no network here\? .*MODEL.BACKBONE.PATH"):
        load_clip("open_clip:ViT-B-16/laion2b_s34b_b88k")


def test_a_missing_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(UserError, match="pip install open_clip_torch"):
        load_clip("open_clip:ViT-B-16/laion2b_s34b_b88k")


def test_a_different_normalisation_is_a_warning_naming_the_opts(reference, tmp_path, synthetic_root):
    folder = write_dir(tmp_path / "m", reference, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    offline_trainer("ZeroshotCLIP", synthetic_root, tmp_path / "run", "MODEL.BACKBONE.NAME", f"open_clip:local-dir:{folder}")
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "add INPUT.PIXEL_MEAN \"[0.5, 0.5, 0.5]\"" in log and "add INPUT.PIXEL_STD \"[0.5, 0.5, 0.5]\"" in log


def test_a_real_architecture_passes_every_check(monkeypatch):
    """``open_clip:ViT-B-16/laion2b_s34b_b88k`` as a user names it, the download replaced by random weights."""
    built = []
    real_create = open_clip.create_model

    def no_download(model_name, pretrained=None, **kwargs):
        assert (model_name, pretrained) == ("ViT-B-16", "laion2b_s34b_b88k")
        built.append(real_create(model_name, pretrained=None, **kwargs))
        return built[-1]

    monkeypatch.setattr(open_clip, "create_model", no_download)
    model = load_clip("open_clip:ViT-B-16/laion2b_s34b_b88k")
    assert (model.visual.input_resolution, model.visual.output_dim, model.transformer.width) == (224, 512, 512)
    assert len(model.transformer.resblocks) == len(model.visual.transformer.resblocks) == 12
    tokens = tokenize(TEXTS[:2], 77)
    assert torch.allclose(model.encode_text(tokens), built[0].encode_text(tokens), atol=1e-4)
