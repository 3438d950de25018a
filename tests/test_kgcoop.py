"""KgCoOp trainer: parity, the kg term, KgCoOp's CTX_INIT rule, the hand-crafted teacher, checkpoints."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from gopro_prompts import train
from gopro_prompts.dassl_compat import load_checkpoint
from gopro_prompts.trainers.clip_helpers import _clip, encode_class_texts
from gopro_prompts.trainers.kgcoop import KgCoOp
from gopro_prompts.trainers.method import training_step
from gopro_prompts.user_errors import UserError
from helpers import REPO, method_cfg, offline_trainer, perturb, random_images

CLASSNAMES = ["dog", "sea_turtle", "forklift", "golden retriever", "air conditioner"]


def _model(clip, classnames=CLASSNAMES, dataset="ImageNet", **node):
    cfg = method_cfg("COOP", **{"N_CTX": 4, "CTX_INIT": True, "W": 8.0, **node})
    cfg.DATASET.NAME = dataset
    return KgCoOp.build_clip_model(cfg, classnames, clip)


def _teacher(clip, classnames, template):
    feats = encode_class_texts(clip, classnames, [template], fp32=True)[0].double()
    return feats / feats.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- parity
def test_parity_fixture_with_variants(parity_fixtures):
    import parity

    ok, rows = parity.check(str(parity_fixtures / "kgcoop.pt"), str(parity_fixtures / "tiny_clip_fp16.pt"),
                            variants=True, quiet=True)
    assert ok, rows
    assert {"loss.kg", "loss.total", "grad_total.ctx", "out.kg_cos", "tokenized_prompts_zs",
            "variant_fp16_zs_text.grad_total.ctx"} <= {k for k, _ in rows}


# ------------------------------------------------------------------------ the kg term
def test_kg_term_and_total_loss_match_a_hand_computation(tiny_clip):
    model = _model(tiny_clip)
    perturb(model.prompt_learner)
    images, labels = random_images(), torch.tensor([0, 3, 1])
    optim = torch.optim.SGD(model.prompt_learner.parameters(), lr=0.0)
    step = training_step(model, images, labels, optim)
    assert set(step.terms) == {"ce", "kg"} and model.loss_weights == {"kg": 8.0}

    with torch.no_grad():
        text = model.text_features().double()
        teacher = _teacher(tiny_clip, CLASSNAMES, "a photo of a {}.")
        cos = [(t @ z) / (t.norm() * z.norm()) for t, z in zip(text, teacher)]
        kg = 1.0 - sum(cos) / len(cos)
        image = model.encode_images(images).double()
        logits = model.logit_scale.exp().double() * torch.nn.functional.normalize(image, dim=-1) @ \
            torch.nn.functional.normalize(text, dim=-1).t()
        ce = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(step.terms["kg"].double(), kg, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step.loss.double(), ce + 8.0 * kg, rtol=1e-5, atol=1e-5)
    assert step.terms["kg"] > 0  # the perturbed prompts moved away from the hand-crafted ones
    total_grad = model.prompt_learner.ctx.grad.clone()  # lr 0: the step left ctx as it was
    model.prompt_learner.ctx.grad = None
    model.forward_train(images, labels)[1]["ce"].backward()
    assert not torch.allclose(total_grad, model.prompt_learner.ctx.grad)  # the kg term pulls on ctx


# ----------------------------------------------------------------- KgCoOp's context rule
@pytest.mark.parametrize("ctx_init,n_ctx,csc,prefix,shape", [
    (True, 16, False, "a photo of a", (4,)),                # True: the phrase, N_CTX ignored
    ("a photo of a dog", 8, False, "a photo of a", (4,)),    # any string: the same phrase, its text ignored
    (True, 16, True, "a photo of a", (4,)),                  # CSC ignored with the phrase
    ("", 6, False, "X X X X X X", (6,)),                     # empty: random, N_CTX tokens
    (False, 3, True, "X X X", (len(CLASSNAMES), 3)),         # empty + CSC: class-specific
])
def test_ctx_init_rule(tiny_clip, ctx_init, n_ctx, csc, prefix, shape):
    learner = _model(tiny_clip, CTX_INIT=ctx_init, N_CTX=n_ctx, CSC=csc).prompt_learner
    width = tiny_clip.ln_final.weight.shape[0]
    assert learner.prompt_prefix == prefix and learner.ctx.shape == (*shape, width)
    if prefix == "a photo of a":
        torch.testing.assert_close(learner.ctx, tiny_clip.token_embedding(learner.tokenized_prompts[0, 1:5]))
    prompts = learner()
    assert prompts.shape[0] == len(CLASSNAMES)


def test_other_class_token_positions_are_refused(tiny_clip):
    with pytest.raises(UserError, match="CLASS_TOKEN_POSITION .*set it to end"):
        _model(tiny_clip, CLASS_TOKEN_POSITION="middle")


# ------------------------------------------------------------------------ the teacher
def test_teacher_follows_the_dataset_template_table(tiny_clip):
    model = _model(tiny_clip, dataset="DescribableTextures")
    assert model.zs_prompts[0] == "a photo of a dog, a type of texture."  # KgCoOp's own, not CoOp's
    torch.testing.assert_close(model.text_features_zs.double(),
                               _teacher(tiny_clip, CLASSNAMES, "a photo of a {}, a type of texture."))
    assert _model(tiny_clip, dataset="SyntheticShapes").zs_prompts[1] == "a photo of a sea turtle."


def test_teacher_is_fp32_whatever_the_clip_weights(tiny_clip):
    clip16 = copy.deepcopy(tiny_clip)
    _clip().model.convert_weights(clip16)  # PREC fp16's weights
    model = _model(clip16)
    assert model.text_features_zs.dtype == torch.float32
    expected = _teacher(copy.deepcopy(clip16).float(), CLASSNAMES, "a photo of a {}.")
    torch.testing.assert_close(model.text_features_zs.double(), expected, rtol=1e-5, atol=1e-6)
    assert "text_features_zs" not in model.state_dict()


# ------------------------------------------------------------ trainer integration
@pytest.fixture(scope="module")
def default_run(tmp_path_factory, synthetic_root):
    """``python train.py --trainer KgCoOp``: the embedded offline default (base classes, 1 epoch, 2 shots)."""
    out = tmp_path_factory.mktemp("kgcoop_default")
    train.main(["--trainer", "KgCoOp", "--output-dir", str(out), "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2",
                "DATASET.SUBSAMPLE_CLASSES", "base"])
    return out


def test_embedded_default_trains_and_evaluates(default_run):
    log = (default_run / "log.txt").read_text()
    assert "Finish training" in log and "* accuracy:" in log
    assert " kg " in log and "Loading weights" not in log  # the kg term is logged beside ce
    ckpt = load_checkpoint(str(default_run / "prompt_learner" / "model.pth.tar-1"))
    assert set(ckpt["state_dict"]) == {"ctx"}  # KgCoOp's context only: no teacher, no unused modules


def test_teacher_is_rebuilt_for_the_new_classes(default_run, tmp_path, synthetic_root):
    trainer = offline_trainer("KgCoOp", synthetic_root, tmp_path, "DATASET.SUBSAMPLE_CLASSES", "new")
    trainer.load_model(str(default_run), epoch=1)
    model = trainer.model
    names = trainer.dm.dataset.classnames
    ckpt = load_checkpoint(str(default_run / "prompt_learner" / "model.pth.tar-1"))
    assert torch.equal(model.prompt_learner.ctx.detach().cpu(), ckpt["state_dict"]["ctx"])
    clip, _ = KgCoOp.load_backbone(trainer.cfg, "cpu")
    assert model.text_features_zs.shape[0] == len(names) == model.prompt_learner.n_cls
    torch.testing.assert_close(model.text_features_zs.double().cpu(), _teacher(clip, names, "a photo of a {}."))


# ------------------------------------------------------------------------- scripts
def test_base2new_scripts_pass_the_official_options(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DATA": str(tmp_path), "OUTPUT": str(tmp_path / "out"), "DRY_RUN": "1",
           "PYTHON": sys.executable}
    official = "TRAINER.COOP.N_CTX 4 TRAINER.COOP.CSC False TRAINER.COOP.W 8.0 TRAINER.COOP.CLASS_TOKEN_POSITION end"
    tail = "oxford_pets/shots_16/KgCoOp/vit_b16_ep100_ctxv1/seed2"
    for script, expected in (("base2new_train.sh", f"train_base/{tail} DATASET.NUM_SHOTS 16 "
                              f"DATASET.SUBSAMPLE_CLASSES base {official}"),
                             ("base2new_test.sh", f"--load-epoch 100 --eval-only DATASET.NUM_SHOTS 16 "
                              f"DATASET.SUBSAMPLE_CLASSES new {official}")):
        run = subprocess.run(["bash", str(REPO / "scripts" / "kgcoop" / script), "oxford_pets", "2"], env=env,
                             capture_output=True, text=True, check=True)
        assert "--config-file configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml" in run.stdout
        assert expected in run.stdout, run.stdout
