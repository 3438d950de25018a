"""PromptSRC trainer: parity, teachers, loss terms, Gaussian prompt aggregation, training end to end."""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
import yaml

from gopro_prompts import train
from gopro_prompts.dassl_compat import load_checkpoint
from gopro_prompts.trainers.clip_helpers import PRECISIONS, _clip, tokenize
from gopro_prompts.trainers.promptsrc import (
    IMAGENET_TEMPLATES, PromptSRC, PromptSRCModel, gpa_epoch_weights, text_teacher_features,
)
from gopro_prompts.user_errors import UserError
from helpers import REPO, method_cfg, perturb, random_images

CLASSNAMES = ["dog", "sea_turtle", "forklift", "golden retriever", "air conditioner"]


def _cfg(**node):
    return method_cfg("PROMPTSRC", **{"PROMPT_DEPTH_VISION": 3, "PROMPT_DEPTH_TEXT": 3, **node})


def _model(clip, classnames=CLASSNAMES, **node):
    return PromptSRCModel(_cfg(**node).TRAINER.PROMPTSRC, classnames, clip)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for this module: the tiny CLIP gains nothing from more, and on a busy
    2-core machine idle-spinning worker threads make it several times slower.  Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tiny_clip):
    """One PromptSRC model on the tiny CLIP (GPA tests reset its aggregation state)."""
    return _model(tiny_clip)


# --------------------------------------------------------------------------- parity
def test_parity_fixture_with_variants(parity_fixtures):
    import parity

    ok, rows = parity.check(str(parity_fixtures / "promptsrc.pt"), str(parity_fixtures / "tiny_clip_fp16.pt"),
                            variants=True, quiet=True)
    assert ok, rows
    keys = {k for k, _ in rows}
    assert {"out.zs_text_features_per_template_raw", "out.zs_logits", "loss.scl_logits", "loss.total",
            "grad_total.text_deep_prompts.1", "gpa.epoch_weights", "gpa.aggregated.ctx",
            "variant_fp16_prompt_cast.grad_total.ctx"} <= keys


def test_templates_are_the_official_list_in_order(parity_fixtures):
    meta = torch.load(parity_fixtures / "promptsrc.pt", weights_only=True)["meta"]
    assert list(IMAGENET_TEMPLATES) == list(meta["zs_templates"]) and len(IMAGENET_TEMPLATES) == 60


# --------------------------------------------------------------------------- teachers
def _hand_text_teacher(clip, classnames):
    """The mean over the 60 templates of CLIP's raw encode_text features (no normalisation first)."""
    names = [c.replace("_", " ") for c in classnames]
    with torch.no_grad():
        feats = [clip.encode_text(tokenize([t.replace("{}", n) for n in names])) for t in IMAGENET_TEMPLATES]
    return torch.stack(feats).mean(0)


def test_text_teacher_is_the_mean_of_raw_template_features(tiny_clip, model):
    expected = _hand_text_teacher(tiny_clip, CLASSNAMES)
    assert model.zs_text_features_raw.dtype == torch.float32
    torch.testing.assert_close(model.zs_text_features_raw, expected, rtol=1e-5, atol=1e-6)
    # PromptSRC's quirk: not CLIP's usual ensemble (normalise each template first, then average)
    per_template, _ = text_teacher_features(tiny_clip, CLASSNAMES)
    usual = F.normalize(F.normalize(per_template, dim=-1).mean(0), dim=-1)
    assert not torch.allclose(F.normalize(model.zs_text_features_raw, dim=-1), usual, atol=1e-4)


def test_teachers_are_rebuilt_for_new_classes_and_never_saved(tiny_clip, model):
    new = ["forklift", "red_panda"]
    other = _model(tiny_clip, new)
    assert other.zs_text_features_raw.shape == (2, model.zs_text_features_raw.shape[1])
    torch.testing.assert_close(other.zs_text_features_raw[0], model.zs_text_features_raw[2])  # forklift
    assert "zs_text_features_raw" not in model.state_dict()  # a non-persistent buffer
    saved = set(model.learnable_module().state_dict())
    assert not any("zs" in k or "teacher" in k for k in saved)
    assert model.image_teacher is None  # fp32 weights: the teacher is the prompted model's own encoder


def test_teachers_compute_in_fp32_with_fp16_clip_weights(tiny_clip):
    half = copy.deepcopy(tiny_clip)
    _clip().model.convert_weights(half)  # the official PREC fp16 layout
    rounded = copy.deepcopy(half).float()  # the same weights, in fp32
    model = _model(half)
    assert model.image_encoder.dtype == torch.float16
    teacher = model.image_teacher
    assert teacher is not None and all(p.dtype == torch.float32 for p in teacher.parameters())
    reference = _model(rounded)
    images = random_images()
    features = model.teacher_image_features(images)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, reference.teacher_image_features(images), rtol=1e-5, atol=1e-6)
    assert model.zs_text_features_raw.dtype == torch.float32
    torch.testing.assert_close(model.zs_text_features_raw, reference.zs_text_features_raw, rtol=1e-5, atol=1e-6)
    assert model.image_teacher is teacher  # one copy, made at build time


# --------------------------------------------------------------------------- losses
def test_each_loss_term_matches_a_hand_computation(tiny_clip, model):
    perturb(model.prompt_learner)
    images, labels = random_images(), torch.tensor([0, 3, 1])
    model.train()
    logits, terms = model.forward_train(images, labels)
    assert list(terms) == ["ce", "scl_logits", "scl_text", "scl_image"]
    with torch.no_grad():
        parts = model.inspect(images)
        t = F.normalize(parts["text_features_raw"], dim=-1)
        v = F.normalize(parts["image_features_raw"], dim=-1)
        z = F.normalize(model.zs_text_features_raw, dim=-1)  # checked against encode_text above
        v0 = F.normalize(tiny_clip.encode_image(images), dim=-1)  # CLIP's own forward, no prompts
        scale = tiny_clip.logit_scale.exp()
        p_logits, q_logits = scale * v @ t.t(), scale * v0 @ z.t()
        p, q = p_logits.softmax(-1), q_logits.softmax(-1)
        batch, n_cls = p.shape
        expected = {
            "ce": -p[torch.arange(batch), labels].log().mean(),
            # KL(q || p) summed, divided by B * C (the official divisor, not B)
            "scl_logits": (q * (q.log() - p.log())).sum() / (batch * n_cls),
            "scl_text": (t - z).abs().mean() * 25,
            "scl_image": (v - v0).abs().mean() * 10,
        }
    torch.testing.assert_close(logits.detach(), p_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts["zs_logits"], q_logits, rtol=1e-5, atol=1e-5)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name].detach(), value, rtol=1e-5, atol=1e-7, msg=name)
    total = model.total_loss(terms)  # the weights are in the terms: the total is their plain sum
    torch.testing.assert_close(total.detach(), sum(expected.values()), rtol=1e-5, atol=1e-6)
    total.backward()
    learner = model.prompt_learner
    assert all(p.grad is not None for p in learner.parameters())
    learner.zero_grad(set_to_none=True)


@pytest.mark.parametrize("key,value", [("GPA_STD", 0), ("GPA_STD", -1), ("TEXT_LOSS_WEIGHT", -1),
                                       ("IMAGE_LOSS_WEIGHT", True), ("GPA_MEAN", "15")])
def test_bad_values_are_user_errors(tiny_clip, key, value):
    with pytest.raises(UserError, match=f"TRAINER.PROMPTSRC.{key} must be"):
        _model(tiny_clip, **{key: value})


@pytest.mark.parametrize("prec", PRECISIONS)
def test_every_prec_runs_on_cpu(prec):
    """The published PromptSRC crashes with PREC fp32 (two dtype errors): every PREC works here."""
    cfg = _cfg(PREC=prec)
    clip_model, precision = PromptSRC.load_backbone(cfg, "cpu")
    model = PromptSRC.build_clip_model(cfg, CLASSNAMES[:2], clip_model)
    images, labels = random_images(2), torch.tensor([0, 1])
    with precision.autocast():
        logits, terms = model.forward_train(images, labels)
    model.total_loss(terms).backward()
    assert all(torch.isfinite(t) for t in terms.values()) and logits.shape == (2, 2)


# --------------------------------------------------------------------------- GPA
def test_gpa_weights_sum_to_one_and_peak_at_the_mean(parity_fixtures):
    meta = torch.load(parity_fixtures / "promptsrc.pt", weights_only=True)["meta"]
    weights = gpa_epoch_weights(15, 1, 20)
    assert weights.dtype == torch.float64
    torch.testing.assert_close(weights, torch.tensor(meta["gpa_epoch_weights_float64"], dtype=torch.float64),
                               rtol=1e-12, atol=0)
    for mean, std, epochs in [(15, 1, 20), (6, 10, 20), (3, 1, 3), (2, 0.5, 5)]:
        w = gpa_epoch_weights(mean, std, epochs)
        assert torch.isfinite(w).all() and abs(w.sum().item() - 1) < 1e-12
        assert int(w.argmax()) + 1 == mean
    # far from every epoch: the official 0 / 0, here all the weight on the nearest epoch
    assert gpa_epoch_weights(1000, 1, 3).tolist() == [0.0, 0.0, 1.0]


def test_offline_default_gpa_weights_fit_its_schedule():
    cfg = yaml.safe_load((REPO / "configs" / "offline" / "PromptSRC.yaml").read_text())
    node, epochs = cfg["TRAINER"]["PROMPTSRC"], cfg["OPTIM"]["MAX_EPOCH"]
    w = gpa_epoch_weights(node["GPA_MEAN"], node["GPA_STD"], epochs)
    assert torch.isfinite(w).all() and abs(w.sum().item() - 1) < 1e-12
    assert w.min() > 0.05  # every epoch counts (the official mean 15 / std 1 would put ~all on the last)


def _reset_gpa(model):
    """The shared model's aggregation state as built (no epoch added)."""
    model._gpa_sum, model._gpa_epoch, model._gpa_max_epoch = None, -1, None
    model._gpa_count, model._gpa_weight_sum = 0, 0.0


def _epoch_values(model, n_epochs, seed=3):
    gen = torch.Generator().manual_seed(seed)
    names = list(model.learnable_module().state_dict())
    return [{n: torch.randn(model.learnable_module().state_dict()[n].shape, generator=gen) for n in names}
            for _ in range(n_epochs)]


def _set(model, values):
    with torch.no_grad():
        for name, tensor in model.learnable_module().state_dict().items():
            tensor.copy_(values[name])


def _learnable(model):
    return {n: t.clone() for n, t in model.learnable_module().state_dict().items()}


def test_gpa_aggregates_three_epochs_into_their_weighted_average(model):
    _reset_gpa(model)
    values = _epoch_values(model, 3)
    weights = gpa_epoch_weights(model.gpa_mean, model.gpa_std, 3).tolist()
    for epoch in range(3):
        _set(model, values[epoch])
        model.end_epoch(epoch, 3)
        if epoch < 2:  # before the last epoch the prompts are left as trained
            state = model.extra_state()
            model.end_epoch(epoch, 3)  # a repeated call (resumed inside the evaluation) is a no-op
            again = model.extra_state()
            assert again["gpa"]["epoch"] == epoch and again["gpa"]["count"] == epoch + 1
            for name in values[epoch]:
                assert torch.equal(_learnable(model)[name], values[epoch][name])
                assert torch.equal(again["gpa"]["sum"][name], state["gpa"]["sum"][name])
    final = _learnable(model)
    for name in final:
        expected = sum(w * values[e][name].double() for e, w in enumerate(weights))
        torch.testing.assert_close(final[name].double(), expected, rtol=1e-6, atol=1e-7)
    model.end_epoch(2, 3)  # the last epoch again: the aggregate is not aggregated twice
    for name in final:
        assert torch.equal(_learnable(model)[name], final[name])


def test_gpa_running_sum_survives_a_checkpoint_round_trip(model):
    values = _epoch_values(model, 3, seed=4)
    _reset_gpa(model)
    for epoch in range(2):
        _set(model, values[epoch])
        model.end_epoch(epoch, 3)
    buffer = io.BytesIO()
    torch.save(model.extra_state(), buffer)  # plain data: loads with weights_only
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    _set(model, values[2])
    model.end_epoch(2, 3)
    uninterrupted = _learnable(model)

    resumed = copy.deepcopy(model)  # a fresh model of the same config
    _reset_gpa(resumed)
    resumed.load_extra_state(state)
    _set(resumed, values[1])
    resumed.end_epoch(1, 3)  # already in the restored sum: no-op
    _set(resumed, values[2])
    resumed.end_epoch(2, 3)
    for name, value in uninterrupted.items():
        assert torch.equal(_learnable(resumed)[name], value)


def test_gpa_without_earlier_epochs_renormalises_with_a_warning(model, capsys):
    _reset_gpa(model)
    values = _epoch_values(model, 3, seed=5)
    _set(model, values[2])
    model.end_epoch(2, 3)
    assert "lacks epochs 1-2" in capsys.readouterr().out
    for name, value in _learnable(model).items():
        torch.testing.assert_close(value, values[2][name])


# ------------------------------------------------------------------ trainer end to end
@pytest.fixture(scope="module")
def offline_run(tmp_path_factory, synthetic_root):
    """``python train.py --trainer PromptSRC``: the embedded default (3 epochs), a checkpoint per epoch."""
    out = tmp_path_factory.mktemp("promptsrc_offline")
    trainer = train.main(["--trainer", "PromptSRC", "--output-dir", str(out), "DATASET.NUM_SHOTS", "1",
                          "TRAIN.CHECKPOINT_FREQ", "1", "TEST.NO_TEST", "True"])
    return trainer, out


def test_embedded_default_final_checkpoint_holds_the_aggregated_prompt(offline_run):
    trainer, out = offline_run
    log = (out / "log.txt").read_text()
    assert "Finish training" in log and "scl_logits" in log and "scl_image" in log
    assert trainer.cfg.OPTIM.MAX_EPOCH == 3
    ckpts = [load_checkpoint(str(out / "VLPromptLearner" / f"model.pth.tar-{e}")) for e in (1, 2, 3)]
    learner = trainer.model.prompt_learner
    assert set(ckpts[2]["state_dict"]) == set(learner.state_dict())
    weights = gpa_epoch_weights(3, 1, 3).tolist()
    sums = [c["method_state"]["gpa"]["sum"] for c in ckpts]
    assert [c["method_state"]["gpa"]["epoch"] for c in ckpts] == [0, 1, 2]
    for name, final in ckpts[2]["state_dict"].items():
        epoch1, epoch2 = ckpts[0]["state_dict"][name], ckpts[1]["state_dict"][name]
        # checkpoints 1 and 2 hold the prompts as trained; the sum runs over their values
        assert torch.equal(sums[1][name], epoch1 * weights[0] + epoch2 * weights[1])
        # the final checkpoint (and the model evaluated after training) holds the aggregate
        assert torch.equal(final, sums[2][name])
        assert torch.equal(learner.state_dict()[name].cpu(), final)
        assert not torch.equal(final, epoch2)


def test_official_whole_model_checkpoint_converts(offline_run):
    """The official trainer saves the whole CustomCLIP: prompts inside CLIP's modules, teachers, buffers."""
    trainer, _ = offline_run
    learner = trainer.model.prompt_learner
    official = {"prompt_learner.ctx": learner.ctx.detach().half(),
                "image_encoder.VPT": learner.vision_prompts_layer0.detach().half(),
                "prompt_learner.token_prefix": torch.zeros(99, 1, 64),
                "prompt_learner.ZS_image_encoder.conv1.weight": torch.zeros(1),
                "image_encoder.conv1.weight": torch.zeros(1), "logit_scale": torch.zeros(())}
    for i, prompt in enumerate(learner.vision_deep_prompts):
        official[f"image_encoder.transformer.resblocks.{i + 1}.VPT_shallow"] = prompt.detach().half()
    for i, prompt in enumerate(learner.text_deep_prompts):
        official[f"text_encoder.transformer.resblocks.{i + 1}.VPT_shallow"] = prompt.detach().half()
    converted = trainer.convert_state_dict("VLPromptLearner", official)
    assert set(converted) == set(learner.state_dict())
    for name, value in learner.state_dict().items():
        torch.testing.assert_close(converted[name].float(), value.half().float().cpu())


def test_a_run_resumed_after_epoch_two_aggregates_as_the_uninterrupted_one(offline_run, tmp_path):
    """The GPA running sum travels in the epoch checkpoints: resuming continues it."""
    import shutil

    _, out = offline_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed, ignore=shutil.ignore_patterns("tensorboard", "log.txt*", "model.pth.tar-3"))
    (resumed / "VLPromptLearner" / "checkpoint").write_text("model.pth.tar-2\n")
    train.main(["--trainer", "PromptSRC", "--output-dir", str(resumed), "DATASET.NUM_SHOTS", "1",
                "TRAIN.CHECKPOINT_FREQ", "1", "TEST.NO_TEST", "True"])
    assert "Found checkpoint at" in (resumed / "log.txt").read_text()
    expected = load_checkpoint(str(out / "VLPromptLearner" / "model.pth.tar-3"))["state_dict"]
    final = load_checkpoint(str(resumed / "VLPromptLearner" / "model.pth.tar-3"))["state_dict"]
    for name, value in expected.items():
        assert torch.equal(final[name], value), name
