"""scripts/gopro/*.sh end to end on the embedded offline dataset (tiny CLIP, one short epoch)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import assert_beats_chance, last_accuracy
from gopro_prompts import dassl_compat

REPO = Path(__file__).resolve().parents[1]
#: the tiny CLIP pretrained on the generated shapes (the random "tiny" one classifies at chance, so
#: its accuracy would say nothing about the evaluation), one short epoch
TINY = ["MODEL.BACKBONE.NAME", "tiny-synthetic", "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", "1",
        "DATALOADER.NUM_WORKERS", "0", "TRAINER.GOPRO.PREC", "fp32"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run(script, *args, env):
    result = subprocess.run(["bash", str(REPO / "scripts" / "gopro" / script), *args, *TINY],
                            env=env, capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture
def env(tmp_path, synthetic_root):
    return {**os.environ, "DATA": synthetic_root, "OUTPUT": str(tmp_path), "SHOTS": "2",
            "PYTHON": sys.executable, "XD_SOURCE": "synthetic_shapes"}


def test_base2new_scripts_train_then_evaluate_new_classes(tmp_path, env):
    tail = Path("synthetic_shapes/shots_2/GOPro/vit_b16/seed1")
    run("base2new_train.sh", "synthetic_shapes", "1", env=env)
    train_dir = tmp_path / "base2new/train_base" / tail
    assert (train_dir / "gopro/model.pth.tar-1").is_file()
    log = (train_dir / "log.txt").read_text()
    assert "Finish training" in log and "SUBSAMPLE_CLASSES: base" in log
    assert f"Dassl backend: {dassl_compat.BACKEND}" in log  # the script's run is on this leg's backend

    run("base2new_test.sh", "synthetic_shapes", "1", env=env)
    test_log = (tmp_path / "base2new/test_new" / tail / "log.txt").read_text()
    assert "Loading weights to gopro" in test_log and "model.pth.tar-1" in test_log
    assert "# classes  6" in test_log
    # seeds 1-3 measured 75-77% on the 6 new classes (chance 16.7%)
    assert_beats_chance(last_accuracy(test_log), 6, factor=3)
    # a finished job is skipped, as in the official scripts
    assert "so skip this job" in run("base2new_train.sh", "synthetic_shapes", "1", env=env)


def test_cross_dataset_scripts_use_the_cross_dataset_config(tmp_path, env):
    run("xd_train.sh", "1", env=env)
    model_dir = tmp_path / "synthetic_shapes/GOPro/vit_b16_cross_datasets_2shots/seed1"
    assert (model_dir / "gopro/model.pth.tar-1").is_file()
    run("xd_test.sh", "synthetic_shapes", "1", "DATASET.TARGET_DOMAINS", "['cartoon']", env=env)
    log = (tmp_path / "evaluation/GOPro/vit_b16_cross_datasets_2shots/synthetic_shapes/seed1/log.txt").read_text()
    assert "TEXT_BATCH_SIZE: 10000" in log and "Loading weights to gopro" in log
    assert "# classes  12" in log
    # seeds 1-3 measured 57-61% on the cartoon domain's 12 classes (chance 8.3%)
    assert_beats_chance(last_accuracy(log), 12, factor=3)
