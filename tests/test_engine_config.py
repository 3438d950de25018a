"""bundled_dassl.config: Dassl 0.6.3 defaults and yacs merge rules (Dassl's ``dassl/config/defaults.py``)."""
from __future__ import annotations

import pytest
from yacs.config import CfgNode as CN

from gopro_prompts.bundled_dassl.config import clean_cfg, get_cfg_default

pytestmark = pytest.mark.bundled_only(
    reason="tests gopro_prompts.bundled_dassl.config directly: "
           "the same code on every leg, so the bundled leg runs it")

# Dassl 0.6.3: every key with its default (dotted name -> value).
EXPECTED_DEFAULTS = {
    "VERSION": 1, "OUTPUT_DIR": "./output", "RESUME": "", "SEED": -1, "USE_CUDA": True,
    "VERBOSE": True,
    "INPUT.SIZE": (224, 224), "INPUT.INTERPOLATION": "bilinear", "INPUT.TRANSFORMS": (),
    "INPUT.NO_TRANSFORM": False, "INPUT.PIXEL_MEAN": [0.485, 0.456, 0.406],
    "INPUT.PIXEL_STD": [0.229, 0.224, 0.225], "INPUT.CROP_PADDING": 4,
    "INPUT.RRCROP_SCALE": (0.08, 1.0), "INPUT.CUTOUT_N": 1, "INPUT.CUTOUT_LEN": 16,
    "INPUT.GN_MEAN": 0.0, "INPUT.GN_STD": 0.15, "INPUT.RANDAUGMENT_N": 2,
    "INPUT.RANDAUGMENT_M": 10, "INPUT.COLORJITTER_B": 0.4, "INPUT.COLORJITTER_C": 0.4,
    "INPUT.COLORJITTER_S": 0.4, "INPUT.COLORJITTER_H": 0.1, "INPUT.RGS_P": 0.2,
    "INPUT.GB_P": 0.5, "INPUT.GB_K": 21,
    "DATASET.ROOT": "", "DATASET.NAME": "", "DATASET.SOURCE_DOMAINS": (),
    "DATASET.TARGET_DOMAINS": (), "DATASET.NUM_LABELED": -1, "DATASET.NUM_SHOTS": -1,
    "DATASET.VAL_PERCENT": 0.1, "DATASET.STL10_FOLD": -1, "DATASET.CIFAR_C_TYPE": "",
    "DATASET.CIFAR_C_LEVEL": 1, "DATASET.ALL_AS_UNLABELED": False,
    "DATALOADER.NUM_WORKERS": 4, "DATALOADER.K_TRANSFORMS": 1, "DATALOADER.RETURN_IMG0": False,
    "DATALOADER.TRAIN_X.SAMPLER": "RandomSampler", "DATALOADER.TRAIN_X.BATCH_SIZE": 32,
    "DATALOADER.TRAIN_X.N_DOMAIN": 0, "DATALOADER.TRAIN_X.N_INS": 16,
    "DATALOADER.TRAIN_U.SAME_AS_X": True, "DATALOADER.TRAIN_U.SAMPLER": "RandomSampler",
    "DATALOADER.TRAIN_U.BATCH_SIZE": 32, "DATALOADER.TRAIN_U.N_DOMAIN": 0,
    "DATALOADER.TRAIN_U.N_INS": 16,
    "DATALOADER.TEST.SAMPLER": "SequentialSampler", "DATALOADER.TEST.BATCH_SIZE": 32,
    "MODEL.INIT_WEIGHTS": "", "MODEL.BACKBONE.NAME": "", "MODEL.BACKBONE.PRETRAINED": True,
    "MODEL.HEAD.NAME": "", "MODEL.HEAD.HIDDEN_LAYERS": (), "MODEL.HEAD.ACTIVATION": "relu",
    "MODEL.HEAD.BN": True, "MODEL.HEAD.DROPOUT": 0.0,
    "OPTIM.NAME": "adam", "OPTIM.LR": 0.0003, "OPTIM.WEIGHT_DECAY": 5e-4,
    "OPTIM.MOMENTUM": 0.9, "OPTIM.SGD_DAMPNING": 0, "OPTIM.SGD_NESTEROV": False,
    "OPTIM.RMSPROP_ALPHA": 0.99, "OPTIM.ADAM_BETA1": 0.9, "OPTIM.ADAM_BETA2": 0.999,
    "OPTIM.STAGED_LR": False, "OPTIM.NEW_LAYERS": (), "OPTIM.BASE_LR_MULT": 0.1,
    "OPTIM.LR_SCHEDULER": "single_step", "OPTIM.STEPSIZE": (-1,), "OPTIM.GAMMA": 0.1,
    "OPTIM.MAX_EPOCH": 10, "OPTIM.WARMUP_EPOCH": -1, "OPTIM.WARMUP_TYPE": "linear",
    "OPTIM.WARMUP_CONS_LR": 1e-5, "OPTIM.WARMUP_MIN_LR": 1e-5, "OPTIM.WARMUP_RECOUNT": True,
    "TRAIN.CHECKPOINT_FREQ": 0, "TRAIN.PRINT_FREQ": 10, "TRAIN.COUNT_ITER": "train_x",
    "TEST.EVALUATOR": "Classification", "TEST.PER_CLASS_RESULT": False,
    "TEST.COMPUTE_CMAT": False, "TEST.NO_TEST": False, "TEST.SPLIT": "test",
    "TEST.FINAL_MODEL": "last_step",
    "TRAINER.NAME": "",
}

# nodes of Dassl's own DA/DG/SSL trainers
DASSL_TRAINER_NODES = [
    "MCD", "MME", "CDAC", "SE", "M3SDA", "DAEL",
    "CROSSGRAD", "DDAIG", "DAELDG", "DOMAINMIX",
    "ENTMIN", "MEANTEACHER", "MIXMATCH", "FIXMATCH",
]

COOP_DATASET_YAML = """\
DATASET:
  NAME: "OxfordPets"
"""

def _trainer_yaml(batch, lr, epochs, print_freq):
    """A trainer YAML shaped like the official CoOp / MaPLe ones (their shared INPUT block and schedule)."""
    return f"""\
DATALOADER:
  TRAIN_X:
    BATCH_SIZE: {batch}
  TEST:
    BATCH_SIZE: 100
  NUM_WORKERS: 8

INPUT:
  SIZE: (224, 224)
  INTERPOLATION: "bicubic"
  PIXEL_MEAN: [0.48145466, 0.4578275, 0.40821073]
  PIXEL_STD: [0.26862954, 0.26130258, 0.27577711]
  TRANSFORMS: ["random_resized_crop", "random_flip", "normalize"]

OPTIM:
  NAME: "sgd"
  LR: {lr}
  MAX_EPOCH: {epochs}
  LR_SCHEDULER: "cosine"
  WARMUP_EPOCH: 1
  WARMUP_TYPE: "constant"
  WARMUP_CONS_LR: 1e-5

TRAIN:
  PRINT_FREQ: {print_freq}

MODEL:
  BACKBONE:
    NAME: "ViT-B/16"
"""


# Shaped like CoOp's configs/trainers/CoOp/vit_b16_ep50.yaml (values as in the repo).
COOP_TRAINER_YAML = _trainer_yaml(batch=32, lr=0.002, epochs=50, print_freq=5)

# Shaped like MaPLe's configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml.
MAPLE_TRAINER_YAML = _trainer_yaml(batch=4, lr=0.0035, epochs=5, print_freq=20) + """
TRAINER:
  MAPLE:
    N_CTX: 2
    CTX_INIT: "a photo of a"
    PREC: "fp16"
    PROMPT_DEPTH: 9
"""


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _leaf_keys(node, prefix=""):
    keys = []
    for k, v in node.items():
        name = f"{prefix}{k}"
        if isinstance(v, CN):
            keys.extend(_leaf_keys(v, name + "."))
        else:
            keys.append(name)
    return keys


def _extend_cfg(cfg):
    """What CoOp/MaPLe's train.py extend_cfg adds; the caller's job, not config.py's."""
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16
    cfg.TRAINER.COOP.CSC = False
    cfg.TRAINER.COOP.CTX_INIT = ""
    cfg.TRAINER.COOP.PREC = "fp16"
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"
    cfg.TRAINER.MAPLE = CN()
    cfg.TRAINER.MAPLE.N_CTX = 2
    cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"
    cfg.TRAINER.MAPLE.PREC = "fp16"
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"


@pytest.mark.parametrize("key", sorted(EXPECTED_DEFAULTS))
def test_every_default_of_a2(key):
    value = _get(get_cfg_default(), key)
    expected = EXPECTED_DEFAULTS[key]
    assert value == expected and type(value) is type(expected), (key, value)


def test_no_unexpected_keys_outside_trainer_nodes():
    keys = {k for k in _leaf_keys(get_cfg_default()) if not k.startswith("TRAINER.")}
    expected = {k for k in EXPECTED_DEFAULTS if not k.startswith("TRAINER.")}
    assert keys == expected


def test_dassl_trainer_nodes_present_and_no_prompt_learning_nodes():
    trainer = get_cfg_default().TRAINER
    assert set(trainer.keys()) == {"NAME", *DASSL_TRAINER_NODES}
    for name in DASSL_TRAINER_NODES:
        assert isinstance(trainer[name], CN)
    # A few of Dassl's values, as printed in CoOp/MaPLe logs.
    assert trainer.MCD.N_STEP_F == 4
    assert trainer.FIXMATCH.CONF_THRE == 0.95
    assert trainer.DOMAINMIX.TYPE == "crossdomain"
    assert trainer.MIXMATCH.WEIGHT_U == 100.0
    for ours in ("COOP", "COCOOP", "MAPLE", "GOPRO", "IVLP", "VPT"):
        assert ours not in trainer


def test_fresh_clone_every_call():
    a = get_cfg_default()
    a.OPTIM.LR = 0.5
    a.INPUT.PIXEL_MEAN[0] = 9.0
    b = get_cfg_default()
    assert b.OPTIM.LR == 0.0003
    assert b.INPUT.PIXEL_MEAN[0] == 0.485
    assert a is not b


def test_yacs_type_rules():
    cfg = get_cfg_default()
    with pytest.raises(ValueError):
        cfg.merge_from_list(["OPTIM.LR", "1"])  # int vs float
    with pytest.raises(ValueError):
        cfg.merge_from_list(["OPTIM.MAX_EPOCH", "5.0"])  # float vs int
    with pytest.raises(AssertionError, match="Non-existent key"):
        cfg.merge_from_list(["OPTIM.NOT_A_KEY", "1"])
    with pytest.raises(AssertionError, match="odd length"):
        cfg.merge_from_list(["OPTIM.LR"])
    cfg.merge_from_list(["OPTIM.LR", "1.0", "SEED", "0", "DATASET.NUM_SHOTS", "16",
                         "INPUT.SIZE", "[32, 32]", "OPTIM.WARMUP_CONS_LR", "1e-5",
                         "DATASET.NAME", "base", "TEST.NO_TEST", "False"])
    assert cfg.OPTIM.LR == 1.0 and cfg.SEED == 0 and cfg.DATASET.NUM_SHOTS == 16
    assert cfg.INPUT.SIZE == (32, 32)  # list -> tuple conversion
    assert cfg.OPTIM.WARMUP_CONS_LR == 1e-5 and cfg.DATASET.NAME == "base"
    assert cfg.TEST.NO_TEST is False
    cfg.freeze()
    with pytest.raises(AttributeError):
        cfg.SEED = 3


def test_coop_and_maple_yamls_merge_unchanged(tmp_path):
    dataset_yaml = tmp_path / "oxford_pets.yaml"
    dataset_yaml.write_text(COOP_DATASET_YAML)
    coop_yaml = tmp_path / "vit_b16_ep50.yaml"
    coop_yaml.write_text(COOP_TRAINER_YAML)
    maple_yaml = tmp_path / "vit_b16_c2_ep5_batch4_2ctx.yaml"
    maple_yaml.write_text(MAPLE_TRAINER_YAML)

    cfg = get_cfg_default()
    _extend_cfg(cfg)
    cfg.merge_from_file(str(dataset_yaml))
    cfg.merge_from_file(str(coop_yaml))
    cfg.merge_from_list(["TRAINER.COOP.N_CTX", "4", "DATASET.SUBSAMPLE_CLASSES", "base"])
    cfg.freeze()
    assert cfg.DATASET.NAME == "OxfordPets"
    assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 32 and cfg.DATALOADER.TEST.BATCH_SIZE == 100
    assert cfg.DATALOADER.NUM_WORKERS == 8
    assert cfg.INPUT.INTERPOLATION == "bicubic" and cfg.INPUT.SIZE == (224, 224)
    assert cfg.INPUT.PIXEL_MEAN == [0.48145466, 0.4578275, 0.40821073]
    assert list(cfg.INPUT.TRANSFORMS) == ["random_resized_crop", "random_flip", "normalize"]
    assert cfg.OPTIM.NAME == "sgd" and cfg.OPTIM.LR == 0.002 and cfg.OPTIM.MAX_EPOCH == 50
    assert cfg.OPTIM.WARMUP_CONS_LR == 1e-5 and isinstance(cfg.OPTIM.WARMUP_CONS_LR, float)
    assert cfg.TRAIN.PRINT_FREQ == 5 and cfg.MODEL.BACKBONE.NAME == "ViT-B/16"
    assert cfg.TRAINER.COOP.N_CTX == 4 and cfg.DATASET.SUBSAMPLE_CLASSES == "base"

    cfg2 = get_cfg_default()
    _extend_cfg(cfg2)
    cfg2.merge_from_file(str(maple_yaml))
    assert cfg2.OPTIM.LR == 0.0035 and cfg2.DATALOADER.TRAIN_X.BATCH_SIZE == 4
    assert cfg2.TRAINER.MAPLE.PROMPT_DEPTH == 9


def test_yaml_with_trainer_node_fails_until_caller_adds_it(tmp_path):
    maple_yaml = tmp_path / "maple.yaml"
    maple_yaml.write_text(MAPLE_TRAINER_YAML)
    with pytest.raises(KeyError):
        get_cfg_default().merge_from_file(str(maple_yaml))


def test_printed_config_shows_dassl_trainer_nodes():
    dump = str(get_cfg_default())
    assert "  CDAC:\n    CLASS_LR_MULTI: 10\n" in dump
    assert "  MME:\n    LMDA: 0.1\n" in dump


def test_clean_cfg_keeps_name_and_own_node():
    cfg = get_cfg_default()
    _extend_cfg(cfg)
    cfg.TRAINER.NAME = "CoOp"
    clean_cfg(cfg, "CoOp")
    assert set(cfg.TRAINER.keys()) == {"NAME", "COOP"}
    assert cfg.TRAINER.COOP.N_CTX == 16
    cfg2 = get_cfg_default()
    clean_cfg(cfg2, "FixMatch")
    assert set(cfg2.TRAINER.keys()) == {"NAME", "FIXMATCH"}
