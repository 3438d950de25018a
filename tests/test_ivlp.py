"""IVLP trainer: parity, where the prompts go at which block, depth limits, prompt text, checkpoints, train.py."""
from __future__ import annotations

import json

import pytest
import torch

from gopro_prompts import train
from gopro_prompts.trainers.config import default_cfg
from gopro_prompts.trainers.ivlp import IVLP, IVLPModel, convert_official_state_dict
from gopro_prompts.user_errors import UserError
from helpers import REPO, last_accuracy, method_cfg, perturb, random_images

CLASSNAMES = ["dog", "sea_turtle", "forklift", "golden retriever", "air conditioner"]
#: the embedded default, shortened: one epoch, one shot, the base classes (half the test images)
TINY_RUN = ("OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "1", "DATASET.SUBSAMPLE_CLASSES", "base")


def _model(clip, **node):
    cfg = method_cfg("IVLP", **{"PROMPT_DEPTH_TEXT": 3, "PROMPT_DEPTH_VISION": 3, **node})
    model = IVLPModel(cfg.TRAINER.IVLP, CLASSNAMES, clip)
    perturb(model.prompt_learner)
    return model


def _block_inputs(blocks, run):
    """The input of every block of ``blocks`` while ``run()`` executes (sequence-first, as CLIP's blocks)."""
    seen, hooks = [], [block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
                       for block in blocks]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


# --------------------------------------------------------------------------- parity
def test_parity_fixture_with_variants(parity_fixtures):
    import parity

    ok, rows = parity.check(str(parity_fixtures / "ivlp.pt"), str(parity_fixtures / "tiny_clip_fp16.pt"),
                            variants=True, quiet=True)
    assert ok, rows
    keys = {k for k, _ in rows}
    assert {"out.prompt_embeddings_head", "grad.text_deep_prompts.1", "grad.vision_deep_prompts.1",
            "variant_fp16_prompt_cast.grad.vision_prompts_layer0"} <= keys


# ------------------------------------------------------------ where the prompts go
@pytest.mark.parametrize("text_depth,vision_depth", [(3, 3), (2, 1), (1, 2), (3, 0)])
def test_deep_prompts_replace_their_positions_before_each_block(tiny_clip, text_depth, vision_depth):
    model = _model(tiny_clip, PROMPT_DEPTH_TEXT=text_depth, PROMPT_DEPTH_VISION=vision_depth)
    learner = model.prompt_learner
    n_t, n_v = learner.n_ctx, 2
    assert len(learner.text_deep_prompts) == text_depth - 1
    assert len(learner.vision_deep_prompts) == max(vision_depth - 1, 0)
    images = random_images()

    text_in = _block_inputs(tiny_clip.transformer.resblocks, lambda: model.text_features(
        learner.text_prompts(), list(learner.text_deep_prompts)))
    text_out = [block(x) for block, x in zip(tiny_clip.transformer.resblocks, text_in)]
    for i in range(1, len(text_in)):
        got = text_in[i][1:1 + n_t]  # [n_t, C, D]
        if i < text_depth:  # replaced, the same for every class, no positional embedding
            expected = learner.text_deep_prompts[i - 1].unsqueeze(1).expand_as(got)
        else:  # carried forward from the previous block
            expected = text_out[i - 1][1:1 + n_t]
        torch.testing.assert_close(got, expected, rtol=0, atol=0 if i < text_depth else 1e-6)
        # every other position is the previous block's output
        torch.testing.assert_close(text_in[i][1 + n_t:], text_out[i - 1][1 + n_t:], rtol=1e-5, atol=1e-6)

    vision_in = _block_inputs(tiny_clip.visual.transformer.resblocks, lambda: model.image_features(
        images, learner.vision_prompts_layer0, list(learner.vision_deep_prompts)))
    n_tokens = 17 + (n_v if vision_depth else 0)  # CLS + 16 patches (+ the appended prompt)
    assert all(x.shape[0] == n_tokens for x in vision_in)
    if vision_depth:  # block 0: appended after the positional embedding (so it gets none), then ln_pre
        layer0 = tiny_clip.visual.ln_pre(learner.vision_prompts_layer0).detach()
        torch.testing.assert_close(vision_in[0][-n_v:], layer0.unsqueeze(1).expand(-1, 3, -1))
    vision_out = [block(x) for block, x in zip(tiny_clip.visual.transformer.resblocks, vision_in)]
    for i in range(1, len(vision_in)):
        if not vision_depth:
            break
        got = vision_in[i][-n_v:]
        if i < vision_depth:
            torch.testing.assert_close(got, learner.vision_deep_prompts[i - 1].unsqueeze(1).expand_as(got),
                                       rtol=0, atol=0)
        else:
            torch.testing.assert_close(got, vision_out[i - 1][-n_v:], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vision_in[i][:-n_v], vision_out[i - 1][:-n_v], rtol=1e-5, atol=1e-6)


def test_no_vision_prompt_leaves_the_image_encoder_as_clip(tiny_clip):
    """PROMPT_DEPTH_VISION 0 (the language-only config), or N_CTX_VISION 0: CLIP's own image features."""
    images = random_images()
    with torch.no_grad():
        plain = tiny_clip.encode_image(images)
        for node in (dict(PROMPT_DEPTH_VISION=0), dict(N_CTX_VISION=0, N_CTX_TEXT=4)):
            model = _model(tiny_clip, **node)
            assert model.prompt_learner.vision_prompts_layer0 is None
            assert not any("vision" in name for name, _ in model.prompt_learner.named_parameters())
            torch.testing.assert_close(model.inspect(images)["image_features_raw"], plain, rtol=1e-5, atol=1e-6)


def test_every_prompt_reaches_the_loss(tiny_clip):
    model = _model(tiny_clip)
    _, terms = model.forward_train(random_images(), torch.tensor([0, 3, 1]))
    terms["ce"].backward()
    for name, param in model.prompt_learner.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 0, name


# ------------------------------------------------------------ config checks and prompt text
@pytest.mark.parametrize("key,value,message", [
    ("PROMPT_DEPTH_TEXT", 4, r"PROMPT_DEPTH_TEXT must be an integer between 1 and 3"),
    ("PROMPT_DEPTH_TEXT", 0, r"PROMPT_DEPTH_TEXT must be an integer between 1 and 3"),
    ("PROMPT_DEPTH_VISION", 4, r"PROMPT_DEPTH_VISION must be an integer between 0 and 3"),
    ("PROMPT_DEPTH_VISION", -1, r"PROMPT_DEPTH_VISION must be an integer between 0 and 3"),
    ("PROMPT_DEPTH_VISION", "3", r"PROMPT_DEPTH_VISION must be an integer"),
    ("N_CTX_TEXT", 0, r"N_CTX_TEXT must be an integer >= 1 .*VPT"),
    ("N_CTX_VISION", -2, r"N_CTX_VISION must be an integer >= 0"),
])
def test_bad_values_are_one_clear_error(tiny_clip, key, value, message):
    with pytest.raises(UserError, match=r"TRAINER\.IVLP\." + message):
        _model(tiny_clip, **{key: value})


@pytest.mark.parametrize("n_ctx,expected_prefix", [(2, "a photo of a"), (4, "a photo of a"), (6, "X X X X X X")])
def test_prompt_text_follows_the_official_rule(tiny_clip, n_ctx, expected_prefix):
    cfg = method_cfg("IVLP", N_CTX_TEXT=n_ctx, PROMPT_DEPTH_TEXT=2, PROMPT_DEPTH_VISION=1)
    learner = IVLPModel(cfg.TRAINER.IVLP, CLASSNAMES, tiny_clip).prompt_learner
    assert learner.prompt_prefix == expected_prefix
    assert learner.ctx.shape == learner.text_deep_prompts[0].shape == (n_ctx, 64)
    if n_ctx <= 4:  # the first n_ctx words of CTX_INIT are learnable, the rest stay fixed tokens
        embedded = tiny_clip.token_embedding(learner.tokenized_prompts[0])
        torch.testing.assert_close(learner.ctx, embedded[1:1 + n_ctx])


def test_official_whole_model_checkpoint_converts(tiny_clip):
    learner = _model(tiny_clip).prompt_learner
    official = {"prompt_learner.ctx": learner.ctx.half(),  # official PREC fp16: ctx in fp16
                "prompt_learner.token_prefix": torch.zeros(9, 1, 64),
                "image_encoder.VPT": learner.vision_prompts_layer0,
                "image_encoder.conv1.weight": torch.zeros(1), "logit_scale": torch.zeros(())}
    for i in (1, 2):
        official[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = learner.vision_deep_prompts[i - 1]
        official[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = learner.text_deep_prompts[i - 1]
        official[f"text_encoder.transformer.resblocks.{i}.attn.in_proj_weight"] = torch.zeros(1)
    converted = convert_official_state_dict(official)
    assert set(converted) == set(learner.state_dict())
    learner.load_state_dict(converted)  # strict
    ours = learner.state_dict()
    assert convert_official_state_dict(ours) is ours


# ------------------------------------------------------------ configs and train.py
def test_official_configs_merge():
    expected = {
        "vit_b16_c2_ep5_batch4_2+2ctx": (0.0035, 5, 2, 2, 12, 12),
        "vit_b16_c2_ep5_batch4_4ctx_language_only": (0.0025, 5, 0, 4, 0, 12),
        "vit_b16_c2_ep20_batch4_4+4ctx": (0.0025, 20, 4, 4, 9, 9),
    }
    for name, (lr, epochs, n_v, n_t, depth_v, depth_t) in expected.items():
        cfg = default_cfg()
        cfg.merge_from_file(str(REPO / "configs" / "trainers" / "IVLP" / f"{name}.yaml"))
        node = cfg.TRAINER.IVLP
        assert (cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == (lr, epochs, 4)
        assert (node.N_CTX_VISION, node.N_CTX_TEXT, node.PROMPT_DEPTH_VISION, node.PROMPT_DEPTH_TEXT) == (
            n_v, n_t, depth_v, depth_t)
        assert node.CTX_INIT == "a photo of a" and node.PREC == "fp16"


def test_embedded_default_trains_and_evaluates(tmp_path, synthetic_root):
    out = tmp_path / "run"
    train.main(["--trainer", "IVLP", "--output-dir", str(out), *TINY_RUN])
    log = (out / "log.txt").read_text()
    assert "running the embedded offline default" in log and "Finish training" in log
    assert (out / IVLP.MODEL_NAME / "model.pth.tar-1").is_file()
    record = json.loads((out / "results.json").read_text())
    assert record["trainer"] == "IVLP" and f"{record['metrics']['accuracy']:.1f}" == f"{last_accuracy(log):.1f}"
