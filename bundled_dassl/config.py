"""Dassl 0.6.3 default configuration (as Dassl's ``dassl/config/defaults.py``).

``get_cfg_default()`` returns a fresh yacs ``CfgNode`` holding every Dassl key
with its default, so that the YAML files written for CoOp, CoCoOp and MaPLe
merge unchanged once the caller has added its ``TRAINER.<NAME>`` node.
yacs itself enforces the merge rules (unknown keys and type changes
are errors).
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

__all__ = ["get_cfg_default", "clean_cfg"]

# Dassl's defaults: top-level keys, then one dict per node. Nested dicts become CfgNodes.
_DEFAULTS = {
    "VERSION": 1,
    "OUTPUT_DIR": "./output",
    "RESUME": "",
    "SEED": -1,
    "USE_CUDA": True,
    "VERBOSE": True,
    "INPUT": {
        "SIZE": (224, 224),
        "INTERPOLATION": "bilinear",
        "TRANSFORMS": (),
        "NO_TRANSFORM": False,
        "PIXEL_MEAN": [0.485, 0.456, 0.406],
        "PIXEL_STD": [0.229, 0.224, 0.225],
        "CROP_PADDING": 4,
        "RRCROP_SCALE": (0.08, 1.0),
        "CUTOUT_N": 1,
        "CUTOUT_LEN": 16,
        "GN_MEAN": 0.0,
        "GN_STD": 0.15,
        "RANDAUGMENT_N": 2,
        "RANDAUGMENT_M": 10,
        "COLORJITTER_B": 0.4,
        "COLORJITTER_C": 0.4,
        "COLORJITTER_S": 0.4,
        "COLORJITTER_H": 0.1,
        "RGS_P": 0.2,
        "GB_P": 0.5,
        "GB_K": 21,
    },
    "DATASET": {
        "ROOT": "",
        "NAME": "",
        "SOURCE_DOMAINS": (),
        "TARGET_DOMAINS": (),
        "NUM_LABELED": -1,
        "NUM_SHOTS": -1,
        "VAL_PERCENT": 0.1,
        "STL10_FOLD": -1,
        "CIFAR_C_TYPE": "",
        "CIFAR_C_LEVEL": 1,
        "ALL_AS_UNLABELED": False,
    },
    "DATALOADER": {
        "NUM_WORKERS": 4,
        "K_TRANSFORMS": 1,
        "RETURN_IMG0": False,
        "TRAIN_X": {"SAMPLER": "RandomSampler", "BATCH_SIZE": 32, "N_DOMAIN": 0, "N_INS": 16},
        "TRAIN_U": {
            "SAME_AS_X": True,
            "SAMPLER": "RandomSampler",
            "BATCH_SIZE": 32,
            "N_DOMAIN": 0,
            "N_INS": 16,
        },
        "TEST": {"SAMPLER": "SequentialSampler", "BATCH_SIZE": 32},
    },
    "MODEL": {
        "INIT_WEIGHTS": "",
        "BACKBONE": {
            "NAME": "",
            "PRETRAINED": True,
        },
        "HEAD": {
            "NAME": "",
            "HIDDEN_LAYERS": (),
            "ACTIVATION": "relu",
            "BN": True,
            "DROPOUT": 0.0,
        },
    },
    "OPTIM": {
        "NAME": "adam",
        "LR": 0.0003,
        "WEIGHT_DECAY": 5e-4,
        "MOMENTUM": 0.9,
        "SGD_DAMPNING": 0,  # (sic) Dassl's spelling
        "SGD_NESTEROV": False,
        "RMSPROP_ALPHA": 0.99,
        "ADAM_BETA1": 0.9,
        "ADAM_BETA2": 0.999,
        "STAGED_LR": False,
        "NEW_LAYERS": (),
        "BASE_LR_MULT": 0.1,
        "LR_SCHEDULER": "single_step",
        "STEPSIZE": (-1,),
        "GAMMA": 0.1,
        "MAX_EPOCH": 10,
        "WARMUP_EPOCH": -1,
        "WARMUP_TYPE": "linear",
        "WARMUP_CONS_LR": 1e-5,
        "WARMUP_MIN_LR": 1e-5,
        "WARMUP_RECOUNT": True,
    },
    "TRAIN": {"CHECKPOINT_FREQ": 0, "PRINT_FREQ": 10, "COUNT_ITER": "train_x"},
    "TEST": {
        "EVALUATOR": "Classification",
        "PER_CLASS_RESULT": False,
        "COMPUTE_CMAT": False,
        "NO_TEST": False,
        "SPLIT": "test",
        "FINAL_MODEL": "last_step",
    },
    # Nodes of Dassl's own DA/DG/SSL trainers. They are never used here,
    # but CoOp/MaPLe print them (their train.py never calls clean_cfg).
    "TRAINER": {
        "NAME": "",
        # DA
        "MCD": {"N_STEP_F": 4},
        "MME": {"LMDA": 0.1},
        "CDAC": {
            "CLASS_LR_MULTI": 10,
            "RAMPUP_COEF": 30,
            "RAMPUP_ITRS": 1000,
            "TOPK_MATCH": 5,
            "P_THRESH": 0.95,
            "STRONG_TRANSFORMS": (),
        },
        "SE": {"EMA_ALPHA": 0.999, "CONF_THRE": 0.95, "RAMPUP": 300},
        "M3SDA": {"LMDA": 0.5, "N_STEP_F": 4},
        "DAEL": {"WEIGHT_U": 0.5, "CONF_THRE": 0.95, "STRONG_TRANSFORMS": ()},
        # DG
        "CROSSGRAD": {"EPS_F": 1.0, "EPS_D": 1.0, "ALPHA_F": 0.5, "ALPHA_D": 0.5},
        "DDAIG": {
            "G_ARCH": "",
            "LMDA": 0.3,
            "CLAMP": False,
            "CLAMP_MIN": -1.0,
            "CLAMP_MAX": 1.0,
            "WARMUP": 0,
            "ALPHA": 0.5,
        },
        "DAELDG": {"WEIGHT_U": 0.5, "CONF_THRE": 0.95, "STRONG_TRANSFORMS": ()},
        "DOMAINMIX": {"TYPE": "crossdomain", "ALPHA": 1.0, "BETA": 1.0},
        # SSL
        "ENTMIN": {"LMDA": 1e-3},
        "MEANTEACHER": {"WEIGHT_U": 1.0, "EMA_ALPHA": 0.999, "RAMPUP": 5},
        "MIXMATCH": {"WEIGHT_U": 100.0, "TEMP": 2.0, "MIXUP_BETA": 0.75, "RAMPUP": 20000},
        "FIXMATCH": {"WEIGHT_U": 1.0, "CONF_THRE": 0.95, "STRONG_TRANSFORMS": ()},
    },
}

_C = CN(_DEFAULTS)


def get_cfg_default() -> CN:
    """A fresh (mutable) copy of Dassl's default config (as Dassl's ``dassl/config/__init__.py``)."""
    return _C.clone()


def clean_cfg(cfg: CN, trainer: str) -> None:
    """Drop every ``TRAINER`` child except ``NAME`` and ``trainer.upper()`` (as Dassl's ``clean_cfg``).

    Used only by Dassl-style ``tools/train.py``; CoOp/MaPLe never call it.
    """
    keep = {"NAME", trainer.upper()}
    for key in list(cfg.TRAINER.keys()):
        if key not in keep:
            cfg.TRAINER.pop(key, None)
