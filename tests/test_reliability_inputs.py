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
def _no_env_report(monkeypatch, synthetic_root):
    """collect_env_info runs pip and friends (seconds): not what these tests are about.

    The embedded offline default generates its dataset under ``synthetic_root``."""
    monkeypatch.setattr(train, "collect_env_info", lambda: "(skipped in tests)")
    monkeypatch.setenv(train.OFFLINE_ROOT_ENV, synthetic_root)


def _snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_root):
    """A finished CoOp run (checkpoint, log, results.json) that bad-input runs must leave as it is."""
    out = tmp_path_factory.mktemp("finished")
    train.collect_env_info, saved = (lambda: ""), train.collect_env_info
    env_before = os.environ.get(train.OFFLINE_ROOT_ENV)
    os.environ[train.OFFLINE_ROOT_ENV] = synthetic_root
    try:
        train.main(["--trainer", "CoOp", "--output-dir", str(out), *FAST])
    finally:
        train.collect_env_info = saved
        if env_before is None:
            del os.environ[train.OFFLINE_ROOT_ENV]
        else:
            os.environ[train.OFFLINE_ROOT_ENV] = env_before
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
def data_copy(tmp_path, synthetic_root, finished, monkeypatch):
    """A private copy of the offline dataset (no few-shot caches) that a test may break; the
    embedded offline default reads it.

    (``finished`` has generated the dataset under ``synthetic_root``.)
    """
    root = tmp_path / "data"
    shutil.copytree(Path(synthetic_root) / "synthetic_shapes", root / "synthetic_shapes",
                    ignore=shutil.ignore_patterns("split_fewshot*"))
    monkeypatch.setenv(train.OFFLINE_ROOT_ENV, str(root))
    split = root / "synthetic_shapes" / "split_zhou_SyntheticShapes.json"
    return root, split, json.loads(split.read_text())


# ------------------------------------------------------------------------------ config
def test_unknown_key_in_a_config_file_names_the_key_and_the_file(capfd, finished, synthetic_root, tmp_path):
    cfg = tmp_path / "my_config.yaml"
    cfg.write_text("OPTIM:\n  LRR: 0.1\n")
    msg = _fails(capfd, finished, ["--trainer", "CoOp", "--config-file", str(cfg), *FAST])
    assert str(cfg) in msg and "unknown config key OPTIM.LRR" in msg and "did you mean OPTIM.LR" in msg


def test_unknown_key_in_the_opts(capfd, finished, synthetic_root):
    msg = _fails(capfd, finished, ["--trainer", "CoOp", *FAST, "TRAINER.COOP.NCTX", "4"])
    assert "command-line opts: unknown config key TRAINER.COOP.NCTX" in msg and "TRAINER.COOP.N_CTX" in msg


@pytest.mark.parametrize("where", ["file", "opts"])
def test_value_of_the_wrong_type(where, capfd, finished, synthetic_root, tmp_path):
    argv = ["--trainer", "CoOp", *FAST]
    if where == "file":
        cfg = tmp_path / "typo.yaml"
        cfg.write_text("OPTIM:\n  MAX_EPOCH: ten\n")
        argv[2:2] = ["--config-file", str(cfg)]
    else:
        argv += ["OPTIM.MAX_EPOCH", "ten"]
    msg = _fails(capfd, finished, argv)
    assert "OPTIM.MAX_EPOCH must be an int" in msg and "'ten'" in msg


def test_config_file_that_is_not_yaml(capfd, finished, synthetic_root, tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("OPTIM:\n  LR: [0.1\n")
    msg = _fails(capfd, finished, ["--trainer", "CoOp", "--config-file", str(cfg), *FAST])
    assert str(cfg) in msg and "not valid YAML" in msg


# ------------------------------------------------------------------------------ model
def test_ctx_init_longer_than_clips_context(capfd, finished, synthetic_root, tmp_path):
    # another config: a run into the finished folder is refused before (gopro_prompts/run_folder.py)
    msg = _fails(capfd, finished, ["--trainer", "CoOp", *FAST,
                                   "TRAINER.COOP.CTX_INIT", " ".join(["photo"] * 80)], output_dir=tmp_path / "run")
    assert "CTX_INIT" in msg and "77" in msg and len(msg) < 300


def test_prompt_depth_larger_than_the_number_of_layers(capfd, finished, synthetic_root, tmp_path):
    msg = _fails(capfd, finished, ["--trainer", "MaPLe", *FAST,
                                   "TRAINER.MAPLE.PROMPT_DEPTH", "9"], output_dir=tmp_path / "run")
    assert "PROMPT_DEPTH" in msg and "between 1 and 3" in msg


def test_batch_size_1_for_gopro(capfd, finished, synthetic_root, tmp_path):
    msg = _fails(capfd, finished, ["--trainer", "GOPro", *FAST,
                                   "DATALOADER.TRAIN_X.BATCH_SIZE", "1"], output_dir=tmp_path / "run")
    assert "BATCH_SIZE is 1" in msg and "2 or more" in msg


# ------------------------------------------------------------------------------ data
def test_corrupt_image(capfd, finished, data_copy):
    root, _, split = data_copy
    bad = root / "synthetic_shapes" / "images" / split["test"][0][0]
    bad.write_bytes(b"this is not a PNG")
    msg = _fails(capfd, finished, ["--trainer", "CoOp", *FAST])
    assert str(bad) in msg and "corrupt" in msg


def test_missing_image(capfd, finished, data_copy):
    root, _, split = data_copy
    gone = root / "synthetic_shapes" / "images" / split["train"][0][0]
    gone.unlink()
    msg = _fails(capfd, finished, ["--trainer", "CoOp", *FAST])
    assert str(gone) in msg


def test_class_without_training_images(capfd, finished, data_copy):
    root, split_file, split = data_copy
    split["train"] = [entry for entry in split["train"] if entry[1] != 5]
    split_file.write_text(json.dumps(split))
    msg = _fails(capfd, finished, ["--trainer", "CoOp", *FAST])
    assert "square' (label 5)" in msg and "no training image" in msg


def test_empty_dataset_after_subsampling(capfd, finished, data_copy, tmp_path):
    root, split_file, split = data_copy
    split = {key: [entry for entry in items if entry[1] == 0] for key, items in split.items()}
    split_file.write_text(json.dumps(split))
    msg = _fails(capfd, finished, ["--trainer", "CoOp", *FAST,
                                   "DATASET.SUBSAMPLE_CLASSES", "new"], output_dir=tmp_path / "run")
    assert "SUBSAMPLE_CLASSES new leaves no class" in msg


def test_num_shots_larger_than_a_class_warns_and_runs(capfd, tmp_path, data_copy):
    for attempt in ("sampled", "from the few-shot cache"):
        code = train.cli(["--trainer", "CoOp", "--output-dir", str(tmp_path / attempt),
                          "--no-train", "DATASET.NUM_SHOTS", "50"])
        out = capfd.readouterr().out
        assert code == 0, attempt
        # CoOp behaviour: a class with fewer images than NUM_SHOTS uses all of them -- and says so
        assert re.search(r"class '[^']+' \(label 0\) has only \d+ (train )?image\(s\), fewer than 50 shots",
                         out), attempt


def test_dataset_root_that_is_a_file(capfd, finished, tmp_path):
    not_a_folder = tmp_path / "datasets.tar"
    not_a_folder.write_bytes(b"")
    msg = _fails(capfd, finished, ["--root", str(not_a_folder), "--trainer", "CoOp",
                                   "--dataset-config-file", "configs/datasets/synthetic_shapes.yaml", *FAST],
                 output_dir=tmp_path / "run")
    assert f"DATASET.ROOT {not_a_folder} is a file" in msg and "--root" in msg


# ------------------------------------------------------------------------------ folders
def test_eval_only_with_a_model_dir_without_the_checkpoint(capfd, finished, synthetic_root, tmp_path):
    out, _ = finished
    base = ["--trainer", "CoOp", "--eval-only"]
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
    msg = _fails(capfd, finished, ["--trainer", "CoOp", *FAST], output_dir=target)
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
    assert train.cli(["--trainer", "CoOp", "--output-dir", str(out), *FAST]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    log = (out / "log.txt").read_text()
    assert "Traceback (most recent call last)" in log and log.rstrip().splitlines()[-1].startswith("error: Cannot read")


# ------------------------------------------------------------------------------ issue 14, part 4
@pytest.mark.parametrize("content, kind", [("- OPTIM\n- LR\n", "a list"), ("0.002\n", "a single value")])
@pytest.mark.parametrize("flag", ["--config-file", "--dataset-config-file"])
def test_config_file_that_is_not_a_mapping(flag, content, kind, capfd, finished, tmp_path):
    cfg = tmp_path / "not_a_mapping.yaml"
    cfg.write_text(content)
    msg = _fails(capfd, finished, ["--trainer", "CoOp", flag, str(cfg), *FAST])
    assert f"{cfg} holds {kind}" in msg and "not a mapping of config keys" in msg and "KEY: VALUE" in msg


def _corrupt_split(split_file, text):
    split_file.write_text(text)
    return f"Split file {split_file}"


@pytest.mark.parametrize("case", ["non-integer label", "2-field entry", "truncated"])
def test_bad_split_file_names_the_file_and_the_entry(case, capfd, finished, data_copy):
    _, split_file, split = data_copy
    if case == "non-integer label":
        split["val"][3][1] = "three"
        expected = "val[3]"
    elif case == "2-field entry":
        split["test"][7] = split["test"][7][:2]
        expected = "test[7]"
    if case == "truncated":
        text = json.dumps(split)[:5000]
        expected = "is not valid JSON"
    else:
        text = json.dumps(split)
    source = _corrupt_split(split_file, text)
    msg = _fails(capfd, finished, ["--trainer", "CoOp", *FAST])
    assert source in msg and expected in msg, msg
    assert {"non-integer label": "'three' is not an integer", "2-field entry": "has 2 field(s)",
            "truncated": "it is truncated or damaged"}[case] in msg


@pytest.mark.parametrize("where", ["across splits", "within one split"])
def test_one_label_with_two_class_names(where, capfd, finished, data_copy):
    _, split_file, split = data_copy
    first = next(i for i, entry in enumerate(split["train"]) if entry[1] == 4)
    name = split["train"][first][2]
    key, index = ("test", 0) if where == "across splits" else ("train", first + 1)
    split[key][index] = [split[key][index][0], 4, "purple hexagon"]
    source = _corrupt_split(split_file, json.dumps(split))
    msg = _fails(capfd, finished, ["--trainer", "CoOp", *FAST])
    assert source in msg and f"label 4 is {name!r} in train[{first}] but 'purple hexagon' in {key}[{index}]" in msg


@pytest.mark.parametrize("key, value", [("DATALOADER.TRAIN_X.BATCH_SIZE", "0"), ("DATALOADER.TEST.BATCH_SIZE", "-1"),
                                        ("OPTIM.MAX_EPOCH", "0"), ("TEST.FINAL_MODEL", "best"),
                                        ("TEST.SPLIT", "train")])
def test_config_values_that_cannot_run(key, value, capfd, finished):
    msg = _fails(capfd, finished, ["--trainer", "CoOp", *FAST, key, value])
    assert msg.startswith(f"error: {key} ") and value in msg


def test_batch_size_is_checked_for_eval_only_too(capfd, finished, tmp_path):
    out, _ = finished
    msg = _fails(capfd, finished, ["--trainer", "CoOp", "--eval-only", "--model-dir", str(out), "--load-epoch", "1",
                                   *FAST, "DATALOADER.TEST.BATCH_SIZE", "0"], output_dir=tmp_path / "eval")
    assert "DATALOADER.TEST.BATCH_SIZE is 0" in msg


def test_training_only_keys_do_not_stop_runs_that_do_not_train(capfd, finished, tmp_path):
    out, _ = finished
    ignored = ["OPTIM.MAX_EPOCH", "0", "TEST.FINAL_MODEL", "best"]
    assert train.cli(["--trainer", "CoOp", "--output-dir", str(tmp_path / "eval"), "--eval-only",
                      "--model-dir", str(out), "--load-epoch", "1", *FAST, *ignored]) == 0
    assert train.cli(["--trainer", "ZeroshotCLIP", "--output-dir", str(tmp_path / "zs"), *FAST, *ignored]) == 0
    assert "error" not in capfd.readouterr().err


@pytest.mark.parametrize("ctx_init, warned, shared", [("a photo of a", True, True), ("", False, False)])
def test_csc_with_ctx_init_warns_and_shares_one_context(ctx_init, warned, shared, capfd, tmp_path):
    trainer = train.main(["--trainer", "CoOp", "--output-dir", str(tmp_path), "--no-train", *FAST,
                          "TRAINER.COOP.CSC", "True", "TRAINER.COOP.CTX_INIT", ctx_init])
    out = capfd.readouterr().out
    warning = "TRAINER.COOP.CSC True is ignored because TRAINER.COOP.CTX_INIT is set"
    assert (warning in out) == warned
    assert (warning in (tmp_path / "log.txt").read_text()) == warned  # the run's log keeps it
    ctx = trainer.model.prompt_learner.ctx
    assert ctx.dim() == (2 if shared else 3)  # official CoOp: the init words make one shared context


def test_a_corrupt_test_image_stops_the_run_before_training(capfd, finished, data_copy, tmp_path):
    root, _, split = data_copy
    bad = root / "synthetic_shapes" / "images" / split["test"][-1][0]
    bad.write_bytes(b"\x89PNG but cut short")
    out = tmp_path / "run"
    msg = _fails(capfd, finished, ["--trainer", "CoOp", *FAST], output_dir=out)
    assert str(bad) in msg and "corrupt" in msg
    assert "epoch [" not in (out / "log.txt").read_text()  # no training step ran
    assert not list(out.glob("*/model.pth.tar-*"))


# ------------------------------------------------------------------------------ issue 14, part 5
@pytest.mark.parametrize("given", ["--root", "--config-file", "DATASET.ROOT"])
def test_data_flags_without_a_dataset_are_refused_and_write_nothing(given, capfd, finished, tmp_path):
    users_data = tmp_path / "my_datasets"
    users_data.mkdir()
    argv = {"--root": ["--root", str(users_data)],
            "--config-file": ["--config-file", "configs/trainers/CoOp/vit_b16_ep50.yaml"],
            "DATASET.ROOT": []}[given]
    opts = ["DATASET.ROOT", str(users_data)] if given == "DATASET.ROOT" else []
    msg = _fails(capfd, finished, ["--trainer", "CoOp", *argv, *FAST, *opts])
    assert msg.startswith(f"error: {given} given without --dataset-config-file: add --dataset-config-file "
                          "configs/datasets/<name>.yaml")
    assert not list(users_data.iterdir())


def test_a_failed_clip_download_says_where_the_weights_go(capfd, finished, monkeypatch, tmp_path):
    import urllib.error
    import urllib.request

    from gopro_prompts.trainers import clip_helpers

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(clip_helpers, "CLIP_CACHE", str(tmp_path / "clip_cache"))
    msg = _fails(capfd, finished, ["--trainer", "CoOp", *FAST, "MODEL.BACKBONE.NAME", "ViT-B/16"],
                 output_dir=tmp_path / "run")
    assert "could not download the CLIP weights of ViT-B/16 ([Errno -3]" in msg
    assert f"{tmp_path / 'clip_cache'}" in msg and "MODEL.BACKBONE.PATH /path/to/ViT-B-16.pt" in msg


@pytest.mark.parametrize("given, suggested", [("coop", "CoOp"), ("maple", "MaPLe"), ("GOPRO", "GOPro")])
def test_trainer_names_are_suggested_whatever_the_case(given, suggested, capfd, finished):
    msg = _fails(capfd, finished, ["--trainer", given, *FAST])
    assert f"unknown trainer {given!r} (did you mean {suggested}?)" in msg


def test_dataset_names_are_suggested_whatever_the_case(capfd, finished):
    msg = _fails(capfd, finished, ["--trainer", "CoOp", *FAST, "DATASET.NAME", "oxfordpets"])
    assert "(did you mean OxfordPets?)" in msg


@pytest.mark.parametrize("flag", [["--seed", "2"], ["--eval-only"], ["--seed=2"]])
def test_a_flag_after_the_opts_is_named_as_misplaced(flag, capfd, finished):
    msg = _fails(capfd, finished, ["--trainer", "CoOp", "OPTIM.LR", "0.01", *flag, *FAST])
    assert msg.startswith(f"error: {flag[0].split('=')[0]} must come before the KEY VALUE opts")
    assert "unknown config key" not in msg
