"""ProGrad trainer: parity, the kl term, the projected update, ProGrad's CTX_INIT rule, the teacher."""
from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from gopro_prompts import train
from gopro_prompts.dassl_compat import load_checkpoint
from gopro_prompts.trainers.clip_helpers import _clip, encode_class_texts, tokenize
from gopro_prompts.trainers.method import training_step
from gopro_prompts.trainers.prograd import ProGrad, ProGradModel, prograd_kl, prograd_project
from gopro_prompts.user_errors import UserError
from helpers import last_accuracy, method_cfg, perturb, random_images

CLASSNAMES = ["dog", "sea_turtle", "forklift", "golden retriever", "air conditioner"]


def _cfg(dataset="ImageNet", loss=None, **node):
    cfg = method_cfg("COOP", **{"N_CTX": 16, "CTX_INIT": True, **node})
    cfg.DATASET.NAME = dataset
    cfg.LOSS.NAME = "prograd"
    for key, value in (loss or {}).items():
        cfg.LOSS[key] = value
    return cfg


def _model(clip, classnames=CLASSNAMES, dataset="ImageNet", loss=None, **node):
    return ProGrad.build_clip_model(_cfg(dataset, loss, **node), classnames, clip)


def _teacher(clip, classnames, template):
    feats = encode_class_texts(clip, classnames, [template], fp32=True)[0].double()
    return feats / feats.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- parity
def test_parity_fixture(parity_fixtures):
    import parity

    ok, rows = parity.check(str(parity_fixtures / "prograd.pt"), str(parity_fixtures / "tiny_clip_fp16.pt"),
                            quiet=True)
    assert ok, rows
    assert {"loss.ce", "loss.kl", "grad.ctx", "grad_kl.ctx", "grad_prograd.ctx", "out.zs_logits",
            "out.text_features_zs", "tokenized_prompts", "tokenized_prompts_zs"} <= {k for k, _ in rows}


# ------------------------------------------------------------------------ the kl term
def test_kl_term_is_the_official_soft_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(4, 6, generator=gen) * 3, torch.randn(4, 6, generator=gen) * 3
    temperature = 2.0
    total = 0.0
    for b in range(4):
        s = [math.exp(v / temperature) for v in teacher[b].tolist()]
        q = [v / sum(s) for v in s]
        e = [math.exp(v / temperature) for v in logits[b].tolist()]
        log_p = [math.log(v / sum(e)) for v in e]
        total += sum(-qc * lc for qc, lc in zip(q, log_p)) * temperature ** 2
    kl = prograd_kl(logits, teacher, temperature)
    assert kl.item() == pytest.approx(total / 4, rel=1e-6)
    # not a true KL: the teacher's entropy (times T^2) is not subtracted
    q = torch.softmax(teacher / temperature, dim=-1)
    true_kl = torch.nn.functional.kl_div(torch.log_softmax(logits / temperature, -1), q, reduction="batchmean")
    entropy = -(q * q.log()).sum(1).mean()
    torch.testing.assert_close(kl, (true_kl + entropy) * temperature ** 2, rtol=1e-5, atol=1e-6)


def test_losses_of_a_training_step(tiny_clip):
    model = _model(tiny_clip, loss={"T": 2.0})
    perturb(model.prompt_learner)
    images, labels = random_images(), torch.tensor([0, 3, 1])
    step = training_step(model, images, labels, torch.optim.SGD(model.prompt_learner.parameters(), lr=0.0))
    assert set(step.terms) == {"ce", "kl"}
    with torch.no_grad():
        image = model.encode_images(images)
        zs = model.logit_scale.exp() * torch.nn.functional.normalize(image, dim=-1) @ model.text_features_zs.t()
    torch.testing.assert_close(step.terms["kl"], prograd_kl(step.logits, zs, 2.0))
    torch.testing.assert_close(step.terms["ce"], torch.nn.functional.cross_entropy(step.logits, labels))
    assert step.loss.item() == step.terms["ce"].item()  # the logged total is the CE (kl weight 0)


# ------------------------------------------------------------------------ the projected update
def test_projection_by_hand():
    g_ce = torch.tensor([1.0, 0.0])
    conflicting = torch.tensor([-1.0, 1.0])  # cosine -1/sqrt(2)
    torch.testing.assert_close(prograd_project(g_ce, conflicting, 1.0), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(prograd_project(g_ce, conflicting, 0.5), torch.tensor([0.75, 0.25]))
    assert torch.dot(prograd_project(g_ce, conflicting, 1.0), conflicting).abs() < 1e-7  # orthogonal at lambda 1
    for agreeing in (torch.tensor([1.0, 1.0]), torch.tensor([0.0, 3.0]), torch.zeros(2)):  # cos > 0, = 0, NaN
        assert torch.equal(prograd_project(g_ce, agreeing, 1.0), g_ce)
    shaped = torch.randn(3, 4)
    assert prograd_project(shaped, -shaped, 1.0).shape == (3, 4)
    torch.testing.assert_close(prograd_project(shaped, -shaped, 1.0), torch.zeros(3, 4), atol=1e-6, rtol=0)


def _hand_made_terms(ctx, a, b):
    """Terms whose gradients with respect to ``ctx`` are exactly ``a`` (ce) and ``b`` (kl)."""
    return {"ce": (ctx * a).sum(), "kl": (ctx * b).sum()}


@pytest.mark.parametrize("lam", [1.0, 0.3])
def test_backward_projects_only_conflicting_gradients(tiny_clip, lam):
    model = _model(tiny_clip, N_CTX=4, loss={"LAMBDA": lam})
    ctx = model.prompt_learner.ctx
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(ctx.shape, generator=gen)
    noise = 0.1 * torch.randn(ctx.shape, generator=gen)
    for b, conflict in ((-a + noise, True), (a + noise, False)):
        ctx.grad = None
        terms = _hand_made_terms(ctx, a, b)
        model.backward(model.total_loss(terms), terms)
        k = b.flatten() / b.norm()
        projected = (a.flatten() - lam * torch.dot(a.flatten(), k) * k).view_as(a)
        torch.testing.assert_close(ctx.grad, projected if conflict else a, rtol=1e-5, atol=1e-6)
        if not conflict:
            assert torch.equal(ctx.grad, a)  # the CE gradient itself; the KL gradient is never added

    # a grad scaler scales both terms alike: the same update, scaled
    ctx.grad = None
    terms = _hand_made_terms(ctx, a, -a + noise)
    model.backward(model.total_loss(terms), terms, scale=lambda t: t * 1024.0)
    k = (-a + noise).flatten() / (-a + noise).norm()
    torch.testing.assert_close(ctx.grad / 1024.0, (a.flatten() - lam * torch.dot(a.flatten(), k) * k).view_as(a),
                               rtol=1e-5, atol=1e-6)
    # ... and an overflowing KL gradient makes the update non-finite, so the scaler skips the step
    bad = a.clone()
    bad[0, 0] = float("inf")
    ctx.grad = None
    terms = _hand_made_terms(ctx, a, bad)
    model.backward(model.total_loss(terms), terms, scale=lambda t: t * 1024.0)
    assert not torch.isfinite(ctx.grad).any()


def test_training_step_uses_the_projected_gradient(tiny_clip):
    model = _model(tiny_clip)
    perturb(model.prompt_learner, seed=7)
    images, labels = random_images(), torch.tensor([0, 3, 1])
    ctx = model.prompt_learner.ctx
    _, terms = model.forward_train(images, labels)
    g_ce, = torch.autograd.grad(terms["ce"], [ctx], retain_graph=True)
    g_kl, = torch.autograd.grad(terms["kl"], [ctx])
    expected = 0.5 * prograd_project(g_ce, g_kl, 1.0)
    before = ctx.detach().clone()
    training_step(model, images, labels, torch.optim.SGD([ctx], lr=0.5))
    torch.testing.assert_close(before - ctx.detach(), expected, rtol=1e-4, atol=1e-7)

    # the same step through a real grad scaler (PREC amp's path): unscaled, the same update
    with torch.no_grad():
        ctx.copy_(before)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    training_step(model, images, labels, torch.optim.SGD([ctx], lr=0.5), scaler=scaler)
    torch.testing.assert_close(before - ctx.detach(), expected, rtol=1e-4, atol=1e-7)
    assert scaler.get_scale() == 1024.0


def test_backward_averages_both_gradients_over_the_processes(monkeypatch):
    """autograd.grad bypasses DDP's all-reduce: under torch.distributed the model averages the CE and
    the KL gradients over the processes, then projects (here a second rank is simulated)."""
    from gopro_prompts.trainers import prograd

    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen)
    b[1] = -3 * a[1]  # the other rank alone conflicts strongly: the averages decide
    other_rank = torch.cat([a[1].flatten(), b[1].flatten()])
    monkeypatch.setattr(prograd.distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(prograd.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(prograd.dist, "all_reduce", lambda flat: flat.add_(other_rank))
    module = nn.Module()
    module.ctx = nn.Parameter(torch.zeros(3, 4))
    fake = SimpleNamespace(learnable_module=lambda: module, lam=1.0)
    terms = _hand_made_terms(module.ctx, a[0], b[0])
    ProGradModel.backward(fake, terms["ce"], terms)
    torch.testing.assert_close(module.ctx.grad, prograd_project(a.mean(0), b.mean(0), 1.0), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ ProGrad's CTX_INIT rule
def test_ctx_init_true_pads_the_phrase_with_zero_context(tiny_clip):
    learner = _model(tiny_clip, N_CTX=16).prompt_learner
    assert learner.prompt_prefix == "X " * 12 + "a photo of a"
    assert torch.equal(learner.tokenized_prompts, tokenize(["X " * 12 + "a photo of a dog."] + [
        "X " * 12 + f"a photo of a {n.replace('_', ' ')}." for n in CLASSNAMES[1:]]))
    ctx = learner.ctx.detach()
    assert ctx.shape == (16, 64) and torch.equal(ctx[:12], torch.zeros(12, 64))
    phrase = tiny_clip.token_embedding(tokenize(["a photo of a"]))[0, 1:5].detach()
    assert torch.equal(ctx[12:], phrase)

    # a phrase with a comma: 8 words but 9 tokens, the last word stays a fixed token after the context
    learner = _model(tiny_clip, dataset="OxfordPets", N_CTX=8).prompt_learner
    assert learner.prompt_prefix == "a type of pet, a photo of a"
    tokens = tokenize(["a type of pet, a photo of a dog."])
    assert torch.equal(learner.tokenized_prompts[0], tokens[0])
    embedded = tiny_clip.token_embedding(tokens)[0].detach()
    assert torch.equal(learner.ctx.detach(), embedded[1:9])
    assert torch.equal(learner.token_suffix[0, 0], embedded[9])  # "a"

    with pytest.raises(UserError, match=r"TRAINER.COOP.N_CTX 3 .*4 words"):
        _model(tiny_clip, N_CTX=3)
    with pytest.raises(UserError, match=r"N_CTX 7 .*8 words"):
        _model(tiny_clip, dataset="OxfordPets", N_CTX=7)


def test_ctx_init_false_is_a_random_context(tiny_clip):
    learner = _model(tiny_clip, N_CTX=6, CTX_INIT=False).prompt_learner
    assert learner.prompt_prefix == " ".join(["X"] * 6) and learner.ctx.shape == (6, 64)
    assert 0.005 < learner.ctx.std().item() < 0.05
    csc = _model(tiny_clip, N_CTX=6, CTX_INIT="", CSC=True).prompt_learner
    assert csc.ctx.shape == (5, 6, 64)
    # CSC applies only to a random context, as in the official learner
    assert _model(tiny_clip, N_CTX=6, CSC=True).prompt_learner.ctx.shape == (6, 64)


@pytest.mark.parametrize("position", ["front", "middle"])
def test_other_class_token_positions(tiny_clip, position):
    model = _model(tiny_clip, N_CTX=6, CLASS_TOKEN_POSITION=position)  # middle: NameError in the official code
    prompts = model.prompt_learner()
    assert prompts.shape[:2] == (5, model.prompt_learner.token_suffix.shape[1] + 7)
    assert model(random_images()).shape == (3, 5)


def test_loss_node_is_checked(tiny_clip):
    with pytest.raises(UserError, match=r"LOSS.NAME '' .*set LOSS.NAME prograd"):
        _model(tiny_clip, loss={"NAME": ""})
    with pytest.raises(UserError, match=r"LOSS.T"):
        _model(tiny_clip, loss={"T": 0.0})


# ------------------------------------------------------------------------ the teacher
def test_teacher_is_fp32_and_uses_prograds_templates(tiny_clip):
    clip16 = copy.deepcopy(tiny_clip)
    _clip().model.convert_weights(clip16)  # PREC fp16's weights
    model = _model(clip16, dataset="OxfordPets", N_CTX=8)
    assert model.text_features_zs.dtype == torch.float32
    assert model.zs_prompts[1] == "a type of pet, a photo of a sea turtle."
    expected = _teacher(copy.deepcopy(clip16).float(), CLASSNAMES, "a type of pet, a photo of a {}.")
    torch.testing.assert_close(model.text_features_zs.double(), expected, rtol=1e-5, atol=1e-6)
    assert "text_features_zs" not in model.state_dict()
    assert set(model.learnable_module().state_dict()) == {"ctx"}


def test_teacher_is_rebuilt_for_other_classes(tiny_clip):
    other = ["forklift", "zebra", "teapot"]
    model = _model(tiny_clip, classnames=other)
    torch.testing.assert_close(model.text_features_zs.double(), _teacher(tiny_clip, other, "a photo of a {}."),
                               rtol=1e-5, atol=1e-6)
    assert model.zs_logits(torch.randn(2, 64)).shape == (2, 3)
    assert _model(tiny_clip, dataset="SyntheticShapes").zs_template == "a photo of a {}."  # not in the table


def test_configs_match_the_official_ones():
    from gopro_prompts.trainers.config import accept_str_or_bool, default_cfg
    from helpers import REPO

    expected = {"rn50": (200, "RN50"), "rn50_ep50": (50, "RN50"), "rn50_ep100": (100, "RN50"),
                "vit_b16_ep100_ctxv1": (100, "ViT-B/16")}
    for name, (epochs, backbone) in expected.items():
        cfg = default_cfg()
        accept_str_or_bool(cfg, {"TRAINER.COOP.CTX_INIT": True})  # as train.py merges a config file
        cfg.merge_from_file(str(REPO / "configs" / "trainers" / "ProGrad" / f"{name}.yaml"))
        assert (cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == (0.002, epochs, 32)
        assert cfg.MODEL.BACKBONE.NAME == backbone and cfg.TRAINER.COOP.CTX_INIT is True
        assert (cfg.LOSS.NAME, cfg.LOSS.T, cfg.LOSS.LAMBDA) == ("prograd", 1.0, 1.0)
        assert (cfg.TRAINER.COOP.N_CTX, cfg.TRAINER.COOP.CSC, cfg.TRAINER.COOP.CLASS_TOKEN_POSITION) == (
            16, False, "end")


# ------------------------------------------------------------------------ trainer integration
def test_embedded_default_trains_and_evaluates(tmp_path, synthetic_root):
    out = tmp_path / "run"
    train.main(["--trainer", "ProGrad", "--output-dir", str(out),
                "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "1", "DATASET.SUBSAMPLE_CLASSES", "base"])
    log = (out / "log.txt").read_text()
    assert "running the embedded offline default" in log and "Finish training" in log
    assert " ce " in log and " kl " in log  # both terms are logged
    record = json.loads((out / "results.json").read_text())
    assert record["trainer"] == "ProGrad" and f"{record['metrics']['accuracy']:.1f}" == f"{last_accuracy(log):.1f}"
    ckpt = load_checkpoint(str(out / ProGrad.MODEL_NAME / "model.pth.tar-1"))
    assert set(ckpt["state_dict"]) == {"ctx"}
