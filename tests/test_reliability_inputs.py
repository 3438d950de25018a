"""Issue 8: bad input gives one clear line, a non-zero exit, and leaves earlier results untouched.

Every case runs ``train.cli`` in-process on the embedded offline dataset and
writes into the folder of a finished run, which must not change.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from gopro_prompts import train

FAST = ["DATASET.NUM_SHOTS", "1", "OPTIM.MAX_EPOCH", "1"]


@pytest.fixture(autouse=True)
def _no_env_report(monkeypatch):
    """collect_env_info runs pip and friends (seconds): not what these tests are about."""
    monkeypatch.setattr(train, "collect_env_info", lambda: "(skipped in tests)")


def _snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_root):
    """A finished CoOp run (checkpoint, log, results.json) that bad-input runs must leave as it is."""
    out = tmp_path_factory.mktemp("finished")
    train.collect_env_info, saved = (lambda: ""), train.collect_env_info
    try:
        train.main(["--root", synthetic_root, "--trainer", "CoOp", "--output-dir", str(out), *FAST])
    finally:
        train.collect_env_info = saved
    return out, _snapshot(out)


def _fails(capfd, finished, argv, *, output_dir=None):
    """Run the CLI; assert exit 2, one ``error:`` line, and the finished run untouched. Returns the line."""
    out, before = finished
    code = train.cli(["--output-dir", str(output_dir or out), *argv])
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before
    # new files: only the failed run's own log (and the TensorBoard file of a resumed finished run)
    assert all(k.startswith(("log.txt-", "tensorboard/")) for k in after if k not in before), sorted(after)
    return err[0]


@pytest.fixture
def data_copy(tmp_path, synthetic_root, finished):
    """A private copy of the offline dataset (no few-shot caches) that a test may break.

    (``finished`` has generated the dataset under ``synthetic_root``.)
    """
    root = tmp_path / "data"
    shutil.copytree(Path(synthetic_root) / "synthetic_shapes", root / "synthetic_shapes",
                    ignore=shutil.ignore_patterns("split_fewshot*"))
    split = root / "synthetic_shapes" / "split_zhou_SyntheticShapes.json"
    return root, split, json.loads(split.read_text())


# ------------------------------------------------------------------------------ config
def test_unknown_key_in_a_config_file_names_the_key_and_the_file(capfd, finished, synthetic_root, tmp_path):
    cfg = tmp_path / "my_config.yaml"
    cfg.write_text("OPTIM:\n  LRR: 0.1\n")
    msg = _fails(capfd, finished, ["--root", synthetic_root, "--trainer", "CoOp", "--config-file", str(cfg), *FAST])
    assert str(cfg) in msg and "unknown config key OPTIM.LRR" in msg and "did you mean OPTIM.LR" in msg


def test_unknown_key_in_the_opts(capfd, finished, synthetic_root):
    msg = _fails(capfd, finished, ["--root", synthetic_root, "--trainer", "CoOp", *FAST, "TRAINER.COOP.NCTX", "4"])
    assert "command-line opts: unknown config key TRAINER.COOP.NCTX" in msg and "TRAINER.COOP.N_CTX" in msg


@pytest.mark.parametrize("where", ["file", "opts"])
def test_value_of_the_wrong_type(where, capfd, finished, synthetic_root, tmp_path):
    argv = ["--root", synthetic_root, "--trainer", "CoOp", *FAST]
    if where == "file":
        cfg = tmp_path / "typo.yaml"
        cfg.write_text("OPTIM:\n  MAX_EPOCH: ten\n")
        argv[4:4] = ["--config-file", str(cfg)]
    else:
        argv += ["OPTIM.MAX_EPOCH", "ten"]
    msg = _fails(capfd, finished, argv)
    assert "OPTIM.MAX_EPOCH must be an int" in msg and "'ten'" in msg


def test_config_file_that_is_not_yaml(capfd, finished, synthetic_root, tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("OPTIM:\n  LR: [0.1\n")
    msg = _fails(capfd, finished, ["--root", synthetic_root, "--trainer", "CoOp", "--config-file", str(cfg), *FAST])
    assert str(cfg) in msg and "not valid YAML" in msg


# ------------------------------------------------------------------------------ model
def test_ctx_init_longer_than_clips_context(capfd, finished, synthetic_root):
    msg = _fails(capfd, finished, ["--root", synthetic_root, "--trainer", "CoOp", *FAST,
                                   "TRAINER.COOP.CTX_INIT", " ".join(["photo"] * 80)])
    assert "CTX_INIT" in msg and "77" in msg and len(msg) < 300


def test_prompt_depth_larger_than_the_number_of_layers(capfd, finished, synthetic_root):
    msg = _fails(capfd, finished, ["--root", synthetic_root, "--trainer", "MaPLe", *FAST,
                                   "TRAINER.MAPLE.PROMPT_DEPTH", "9"])
    assert "PROMPT_DEPTH" in msg and "between 1 and 3" in msg


def test_batch_size_1_for_gopro(capfd, finished, synthetic_root):
    msg = _fails(capfd, finished, ["--root", synthetic_root, "--trainer", "GOPro", *FAST,
                                   "DATALOADER.TRAIN_X.BATCH_SIZE", "1"])
    assert "BATCH_SIZE is 1" in msg and "2 or more" in msg


# ------------------------------------------------------------------------------ data
def test_corrupt_image(capfd, finished, data_copy):
    root, _, split = data_copy
    bad = root / "synthetic_shapes" / "images" / split["test"][0][0]
    bad.write_bytes(b"this is not a PNG")
    msg = _fails(capfd, finished, ["--root", str(root), "--trainer", "CoOp", *FAST])
    assert str(bad) in msg and "corrupt" in msg


def test_missing_image(capfd, finished, data_copy):
    root, _, split = data_copy
    gone = root / "synthetic_shapes" / "images" / split["train"][0][0]
    gone.unlink()
    msg = _fails(capfd, finished, ["--root", str(root), "--trainer", "CoOp", *FAST])
    assert str(gone) in msg


def test_class_without_training_images(capfd, finished, data_copy):
    root, split_file, split = data_copy
    split["train"] = [entry for entry in split["train"] if entry[1] != 5]
    split_file.write_text(json.dumps(split))
    msg = _fails(capfd, finished, ["--root", str(root), "--trainer", "CoOp", *FAST])
    assert "square' (label 5)" in msg and "no training image" in msg


def test_empty_dataset_after_subsampling(capfd, finished, data_copy):
    root, split_file, split = data_copy
    split = {key: [entry for entry in items if entry[1] == 0] for key, items in split.items()}
    split_file.write_text(json.dumps(split))
    msg = _fails(capfd, finished, ["--root", str(root), "--trainer", "CoOp", *FAST,
                                   "DATASET.SUBSAMPLE_CLASSES", "new"])
    assert "SUBSAMPLE_CLASSES new leaves no class" in msg


def test_num_shots_larger_than_a_class_warns_and_runs(capfd, tmp_path, data_copy):
    root = data_copy[0]
    for attempt in ("sampled", "from the few-shot cache"):
        code = train.cli(["--root", str(root), "--trainer", "CoOp", "--output-dir", str(tmp_path / attempt),
                          "--no-train", "DATASET.NUM_SHOTS", "50"])
        out = capfd.readouterr().out
        assert code == 0, attempt
        # CoOp behaviour: a class with fewer images than NUM_SHOTS uses all of them -- and says so
        assert re.search(r"class '[^']+' \(label 0\) has only \d+ (train )?image\(s\), fewer than 50 shots",
                         out), attempt


def test_dataset_root_that_is_a_file(capfd, finished, tmp_path):
    not_a_folder = tmp_path / "datasets.tar"
    not_a_folder.write_bytes(b"")
    msg = _fails(capfd, finished, ["--root", str(not_a_folder), "--trainer", "CoOp", *FAST])
    assert f"DATASET.ROOT {not_a_folder} is a file" in msg and "--root" in msg


# ------------------------------------------------------------------------------ folders
def test_eval_only_with_a_model_dir_without_the_checkpoint(capfd, finished, synthetic_root, tmp_path):
    out, _ = finished
    base = ["--root", synthetic_root, "--trainer", "CoOp", "--eval-only"]
    msg = _fails(capfd, finished, [*base, "--model-dir", str(tmp_path), "--load-epoch", "1", *FAST],
                 output_dir=tmp_path / "eval")
    assert f"{tmp_path}/prompt_learner/model.pth.tar-1" in msg and "no prompt_learner/ folder" in msg
    msg = _fails(capfd, finished, [*base, "--model-dir", str(out), "--load-epoch", "50", *FAST],
                 output_dir=tmp_path / "eval")
    assert "model.pth.tar-50" in msg and "use --load-epoch 1" in msg


@pytest.mark.parametrize("case", ["file", "under a file", "read-only"])
def test_unwritable_output_dir(case, capfd, finished, synthetic_root, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    target = {"file": blocker, "under a file": blocker / "out", "read-only": tmp_path / "ro" / "out"}[case]
    if case == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "ro").mkdir(mode=0o500)
    msg = _fails(capfd, finished, ["--root", synthetic_root, "--trainer", "CoOp", *FAST], output_dir=target)
    assert str(target) in msg and "--output-dir" in msg
    assert blocker.read_text() == "a file"


def test_ctrl_c_says_how_to_resume(capfd, monkeypatch):
    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "main", interrupted)
    assert train.cli([]) == 130
    assert "run the same command again to resume" in capfd.readouterr().err


def test_the_traceback_of_an_unexpected_error_goes_to_the_log_only(capfd, tmp_path, data_copy):
    root, _, split = data_copy
    (root / "synthetic_shapes" / "images" / split["test"][0][0]).write_bytes(b"not an image")
    out = tmp_path / "run"
    assert train.cli(["--root", str(root), "--trainer", "CoOp", "--output-dir", str(out), *FAST]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    log = (out / "log.txt").read_text()
    assert "Traceback (most recent call last)" in log and log.rstrip().splitlines()[-1].startswith("error: Cannot read")
