"""train.py end to end on the embedded offline default, and its handling of bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gopro_prompts import dassl_compat, train
from helpers import assert_beats_chance, env_report_skipped, last_accuracy

REPO = Path(__file__).resolve().parents[1]
FAST = ["OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2"]


@pytest.fixture(autouse=True)
def _no_env_report():
    with env_report_skipped():  # seconds per run (the subprocess runs of test_gopro_scripts still make it)
        yield


def _log(out_dir):
    return (Path(out_dir) / "log.txt").read_text()


@pytest.mark.parametrize("trainer_name", ["CoOp", "CoCoOp", "MaPLe", "GOPro"])
def test_train_then_eval_only_gives_the_same_accuracy(trainer_name, tmp_path, synthetic_root):
    out = tmp_path / "train"
    train.main(["--trainer", trainer_name, "--output-dir", str(out), *FAST])
    log = _log(out)
    assert "running the embedded offline default" in log
    assert f"Dassl backend: {dassl_compat.BACKEND}" in log  # the backend this leg runs on
    assert "Finish training" in log
    trained = last_accuracy(log)
    # one epoch (at the warm-up LR) stays near CLIP's zero-shot 47.5%: seeds 1-3 gave 43-49% (chance 8.3%)
    assert_beats_chance(trained, 12, factor=3)
    from gopro_prompts.dassl_compat import TRAINER_REGISTRY

    model_name = TRAINER_REGISTRY.get(trainer_name).MODEL_NAME
    assert (out / model_name / "model.pth.tar-1").is_file()
    record = json.loads((out / "results.json").read_text())
    assert record["trainer"] == trainer_name and record["dataset"] == "SyntheticShapes"
    assert record["epoch"] == 1 and record["seed"] == 1 and record["shots"] == 2
    assert f"{record['metrics']['accuracy']:.1f}" == f"{trained:.1f}"
    assert set(record["metrics"]) >= {"accuracy", "error_rate", "macro_f1"}

    out_eval = tmp_path / "eval"
    acc = train.main(["--trainer", trainer_name, "--output-dir", str(out_eval),
                      "--model-dir", str(out), "--load-epoch", "1", "--eval-only", *FAST])
    assert f"{acc:.1f}" == f"{trained:.1f}"
    assert f"Loading weights to {model_name}" in _log(out_eval)
    record = json.loads((out_eval / "results.json").read_text())
    assert record["eval_only"] and record["load_epoch"] == 1 and record["model_dir"] == str(out)


@pytest.mark.parametrize("extra", [[], ["--eval-only"]])
def test_zeroshot_only_evaluates(extra, tmp_path, synthetic_root):
    out = tmp_path / "zs"
    train.main(["--trainer", "ZeroshotCLIP", "--output-dir", str(out), *extra,
                "DATASET.NUM_SHOTS", "2"])
    log = _log(out)
    assert "epoch [" not in log
    assert "# classes  12" in log
    # the tiny CLIP pretrained on the generated shapes: 47.5% zero-shot on its 12 classes (chance 8.3%)
    assert_beats_chance(last_accuracy(log), 12, factor=3)
    assert not list(out.glob("*/model.pth.tar-*"))


def _cli_error(capfd, argv):
    code = train.cli(argv)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2
    assert err and err[-1].startswith("error: ")
    return err[-1]


def test_bad_input_gives_one_line(capfd, tmp_path, synthetic_root):
    base = ["--output-dir", str(tmp_path / "o")]
    msg = _cli_error(capfd, [*base, "--trainer", "CoOpp"])
    assert "did you mean CoOp" in msg and "ZeroshotCLIP" in msg
    msg = _cli_error(capfd, [*base, "--trainer", "CoOp", "DATASET.NAME", "OxfordPet"])
    assert "OxfordPets" in msg
    msg = _cli_error(capfd, [*base, "--trainer", "CoOp", "--config-file", "configs/nope.yaml"])
    assert "configs/nope.yaml" in msg
    msg = _cli_error(capfd, [*base, "--trainer", "CoOp", "OPTIM.LRR", "0.1"])
    assert "OPTIM.LRR" in msg
    msg = _cli_error(capfd, [*base, "--trainer", "CoOp", "OPTIM.LR", "1"])
    assert "OPTIM.LR" in msg or "type" in msg.lower()
    msg = _cli_error(capfd, [*base, "--trainer", "CoOp", "MODEL.BACKBONE.NAME", "ViT-B/61", *FAST])
    assert "ViT-B/16" in msg
    msg = _cli_error(capfd, [*base, "--trainer", "CoOp", "--eval-only", "--model-dir", str(tmp_path / "empty"),
                             "--load-epoch", "3", *FAST])
    assert "model.pth.tar-3" in msg


def test_seed_zero_is_a_valid_seed_and_absent_seed_keeps_yaml(tmp_path):
    args = train.get_parser().parse_args(["--trainer", "CoOp", "--seed", "0"])
    cfg, offline = train.setup_cfg(args)
    assert cfg.SEED == 0 and offline
    yaml = tmp_path / "seed.yaml"
    yaml.write_text("SEED: 7\n")
    args = train.get_parser().parse_args(["--trainer", "CoOp", "--root", str(tmp_path), "--dataset-config-file",
                                          "configs/datasets/synthetic_shapes.yaml", "--config-file", str(yaml)])
    cfg, _ = train.setup_cfg(args)
    assert cfg.SEED == 7


def test_offline_default_settings_and_overrides():
    args = train.get_parser().parse_args(["--trainer", "CoOp", "OPTIM.MAX_EPOCH", "2"])
    cfg, offline = train.setup_cfg(args)
    assert offline
    assert cfg.DATASET.NAME == "SyntheticShapes" and cfg.MODEL.BACKBONE.NAME == "tiny-synthetic"
    assert cfg.OPTIM.MAX_EPOCH == 2  # explicit opts win over the offline schedule
    assert cfg.OUTPUT_DIR.startswith("output")
    args = train.get_parser().parse_args(["--trainer", "CoOp", "--dataset-config-file",
                                          "configs/datasets/synthetic_shapes.yaml"])
    cfg, offline = train.setup_cfg(args)
    assert not offline and cfg.MODEL.BACKBONE.NAME == ""


def test_every_config_file_merges():
    from gopro_prompts.trainers.config import default_cfg

    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert any("datasets" in str(f) for f in files) and any("trainers" in str(f) for f in files)
    for path in files:
        cfg = default_cfg()
        train._merge_file(cfg, str(path), "config file")  # as train.py merges them (CTX_INIT: str or bool)


def test_input_size_mismatch_is_explained(capfd, tmp_path, synthetic_root):
    msg = _cli_error(capfd, ["--output-dir", str(tmp_path / "o"), "--trainer", "CoOp",
                             "INPUT.SIZE", "(224, 224)", *FAST])
    assert "INPUT.SIZE" in msg and "(32, 32)" in msg
