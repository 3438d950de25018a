"""VPT trainer: parity, the frozen hand-crafted text side, vision prompt insertion, depth limits, train.py."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from gopro_prompts import train
from gopro_prompts.trainers.clip_helpers import _clip
from gopro_prompts.trainers.config import default_cfg
from gopro_prompts.trainers.ivlp import convert_official_state_dict
from gopro_prompts.trainers.vpt import VPT, VPTModel
from gopro_prompts.user_errors import UserError
from helpers import REPO, last_accuracy, method_cfg, perturb, random_images

CLASSNAMES = ["dog", "sea_turtle", "forklift", "golden retriever", "air conditioner"]
OTHER_CLASSES = ["red_circle", "blue square", "cat"]
#: the embedded default, shortened: one epoch, one shot, the base classes (half the test images)
TINY_RUN = ("OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "1", "DATASET.SUBSAMPLE_CLASSES", "base")


def _model(clip, classnames=CLASSNAMES, **node):
    cfg = method_cfg("VPT", **{"PROMPT_DEPTH_VISION": 3, "N_CTX_VISION": 4, **node})
    model = VPTModel(cfg.TRAINER.VPT, classnames, clip)
    perturb(model.prompt_learner)
    return model


def _hand_crafted(clip, classnames):
    """CLIP's own encode_text of "a photo of a <class>." (what the official FixedEmbeddings computes)."""
    texts = [f"a photo of a {name.replace('_', ' ')}." for name in classnames]
    with torch.no_grad():
        return clip.encode_text(_clip().tokenize(texts)).float()


# --------------------------------------------------------------------------- parity
def test_parity_fixture_with_variants(parity_fixtures):
    import parity

    ok, rows = parity.check(str(parity_fixtures / "vpt.pt"), str(parity_fixtures / "tiny_clip_fp16.pt"),
                            variants=True, quiet=True)
    assert ok, rows
    keys = {k for k, _ in rows}
    assert {"out.text_features_raw", "grad.vision_deep_prompts.1",
            "variant_fp16_prompt_cast.grad.vision_prompts_layer0"} <= keys


# ------------------------------------------------------------ the frozen text side
def test_text_features_are_clips_hand_crafted_ones_rebuilt_per_class_set(tiny_clip):
    model = _model(tiny_clip)
    torch.testing.assert_close(model.frozen_text_features, _hand_crafted(tiny_clip, CLASSNAMES))  # fp32 rounding: truncated prompts
    with torch.no_grad():
        assert model.inspect(random_images())["text_features_raw"] is model.frozen_text_features
    # never learned, never saved: the checkpointed module is the vision prompts alone
    assert set(model.prompt_learner.state_dict()) == {
        "vision_prompts_layer0", "vision_deep_prompts.0", "vision_deep_prompts.1"}
    assert not {"frozen_text_features", "tokenized_prompts"} & set(model.state_dict())  # non-persistent

    other = _model(tiny_clip, OTHER_CLASSES)  # e.g. the new classes of base-to-new
    other.prompt_learner.load_state_dict(model.prompt_learner.state_dict())
    torch.testing.assert_close(other.frozen_text_features, _hand_crafted(tiny_clip, OTHER_CLASSES))
    assert other(random_images()).shape == (3, len(OTHER_CLASSES))


def test_ctx_init_is_ignored_with_a_warning(tiny_clip, capsys):
    model = _model(tiny_clip, CTX_INIT="a sketch of a")
    assert "TRAINER.VPT.CTX_INIT 'a sketch of a' is ignored" in capsys.readouterr().out
    torch.testing.assert_close(model.frozen_text_features, _hand_crafted(tiny_clip, CLASSNAMES))  # fp32 rounding: truncated prompts


def test_text_features_are_fp32_under_an_fp16_clip(tiny_clip):
    half = copy.deepcopy(tiny_clip)
    _clip().model.convert_weights(half)
    model = VPTModel(method_cfg("VPT").TRAINER.VPT, CLASSNAMES, half)
    assert model.frozen_text_features.dtype == torch.float32
    rounded = copy.deepcopy(half).float()  # the same weights, computed in fp32
    torch.testing.assert_close(model.frozen_text_features, _hand_crafted(rounded, CLASSNAMES), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ vision prompts
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_vision_prompts_are_appended_then_replace_the_last_tokens(tiny_clip, depth):
    model = _model(tiny_clip, PROMPT_DEPTH_VISION=depth)
    learner, n = model.prompt_learner, 4
    assert len(learner.vision_deep_prompts) == depth - 1
    seen = []
    hooks = [block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
             for block in tiny_clip.visual.transformer.resblocks]
    try:
        with torch.no_grad():
            model(random_images())
    finally:
        for hook in hooks:
            hook.remove()
    blocks = tiny_clip.visual.transformer.resblocks
    assert all(x.shape[0] == 17 + n for x in seen)
    # block 0: appended after the positional embedding (none added), then ln_pre
    torch.testing.assert_close(seen[0][-n:], tiny_clip.visual.ln_pre(learner.vision_prompts_layer0).detach()
                               .unsqueeze(1).expand(-1, 3, -1))
    with torch.no_grad():
        for i in range(1, len(seen)):
            previous = blocks[i - 1](seen[i - 1])
            expected = (learner.vision_deep_prompts[i - 1].unsqueeze(1).expand(-1, 3, -1) if i < depth
                        else previous[-n:])
            torch.testing.assert_close(seen[i][-n:], expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(seen[i][:-n], previous[:-n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key,value,message", [
    ("PROMPT_DEPTH_VISION", 0, r"PROMPT_DEPTH_VISION must be an integer between 1 and 3"),
    ("PROMPT_DEPTH_VISION", 4, r"PROMPT_DEPTH_VISION must be an integer between 1 and 3"),
    ("N_CTX_VISION", 0, r"N_CTX_VISION must be an integer >= 1"),
])
def test_bad_values_are_one_clear_error(tiny_clip, key, value, message):
    with pytest.raises(UserError, match=r"TRAINER\.VPT\." + message):
        _model(tiny_clip, **{key: value})


def test_official_whole_model_checkpoint_converts(tiny_clip):
    learner = _model(tiny_clip).prompt_learner
    official = {"image_encoder.VPT": learner.vision_prompts_layer0, "logit_scale": torch.zeros(()),
                "text_encoder.transformer.resblocks.1.attn.in_proj_weight": torch.zeros(1)}
    for i in (1, 2):
        official[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = learner.vision_deep_prompts[i - 1]
    converted = convert_official_state_dict(official)
    assert set(converted) == set(learner.state_dict())
    learner.load_state_dict(converted)


# ------------------------------------------------------------ configs and train.py
def test_official_config_merges():
    cfg = default_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "trainers" / "VPT" / "vit_b16_c2_ep5_batch4_4.yaml"))
    node = cfg.TRAINER.VPT
    assert (cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == (0.0025, 5, 4)
    assert (node.N_CTX_VISION, node.PROMPT_DEPTH_VISION, node.CTX_INIT, node.PREC) == (8, 12, "a photo of a", "fp16")


def test_embedded_default_trains_and_evaluates(tmp_path, synthetic_root):
    out = tmp_path / "run"
    train.main(["--trainer", "VPT", "--output-dir", str(out), *TINY_RUN])
    log = (out / "log.txt").read_text()
    assert "running the embedded offline default" in log and "Finish training" in log
    assert (out / VPT.MODEL_NAME / "model.pth.tar-1").is_file()
    record = json.loads((out / "results.json").read_text())
    assert record["trainer"] == "VPT" and f"{record['metrics']['accuracy']:.1f}" == f"{last_accuracy(log):.1f}"
