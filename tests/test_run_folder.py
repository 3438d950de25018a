"""Issue 14: a run folder holds one experiment.

Only a run with the same config resumes a folder (gopro_prompts/run_folder.py); the embedded
offline default gets a folder per set of overrides; --eval-only never overwrites a training
run's results.json; results.json names the epoch of the evaluated model and is created with
the permissions of any other file.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from gopro_prompts import run_folder, train
from gopro_prompts.results import record as run_results
from gopro_prompts.user_errors import UserError

#: a 1-epoch CoOp run on the embedded offline default (12 training images, one batch)
RUN = ["--trainer", "CoOp", "DATASET.NUM_SHOTS", "1", "OPTIM.MAX_EPOCH", "1"]
ZEROSHOT = ["--trainer", "ZeroshotCLIP", "DATASET.NUM_SHOTS", "1"]


@pytest.fixture(autouse=True)
def _fast_offline_default(monkeypatch, synthetic_root):
    """The embedded default's data in the shared test folder; no environment report (seconds of pip)."""
    monkeypatch.setenv(train.OFFLINE_ROOT_ENV, synthetic_root)
    monkeypatch.setattr(train, "collect_env_info", lambda: "(skipped in tests)")


def _argv(out, *opts, run=RUN, flags=()):
    return ["--output-dir", str(out), *flags, *run, *opts]


def _snapshot(folder):
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in Path(folder).rglob("*") if p.is_file()}


def _refused(capfd, argv):
    capfd.readouterr()  # what earlier runs printed
    code = train.cli(argv)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_root):
    """A finished 1-epoch CoOp run: its output folder (kept pristine: tests copy it)."""
    out = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(train.OFFLINE_ROOT_ENV, synthetic_root)
        patch.setattr(train, "collect_env_info", lambda: "(skipped in tests)")
        train.main(_argv(out))
    return out


@pytest.fixture
def run_dir(finished, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


# ------------------------------------------------------------------------ 1. only a matching config resumes
@pytest.mark.parametrize("opts, shown", [
    (["OPTIM.MAX_EPOCH", "2"], "OPTIM.MAX_EPOCH: 1 -> 2"),              # kept the old cosine schedule
    (["OPTIM.NAME", "adam"], "OPTIM.NAME: 'sgd' -> 'adam'"),           # crashed with KeyError: 'step'
    (["DATASET.SUBSAMPLE_CLASSES", "base"], "DATASET.SUBSAMPLE_CLASSES: 'all' -> 'base'"),
])
def test_a_run_with_another_config_is_refused_and_writes_nothing(opts, shown, capfd, run_dir):
    assert (run_dir / run_folder.RECORD_FILE).is_file()
    before = _snapshot(run_dir)
    msg = _refused(capfd, _argv(run_dir, *opts))
    assert f"the run in {run_dir} was made with another config ({shown})" in msg, msg
    assert "--output-dir" in msg and f"delete {run_dir}" in msg
    assert _snapshot(run_dir) == before  # no log file, no results.json, no record rewritten


def test_another_trainer_is_refused_and_the_results_stay(capfd, run_dir):
    results = (run_dir / "results.json").read_bytes()
    msg = _refused(capfd, _argv(run_dir, run=ZEROSHOT))
    assert "TRAINER.NAME: 'CoOp' -> 'ZeroshotCLIP'" in msg
    assert (run_dir / "results.json").read_bytes() == results


def test_without_a_record_the_newest_checkpoint_config_is_compared_whatever_the_trainer(
        capfd, run_dir):
    (run_dir / run_folder.RECORD_FILE).unlink()  # a folder made by an older version
    before = _snapshot(run_dir)
    msg = _refused(capfd, _argv(run_dir, "DATASET.NUM_SHOTS", "2"))
    assert "DATASET.NUM_SHOTS: 1 -> 2" in msg
    # zero-shot CLIP has no checkpoint sub-folder of its own: the folder's CoOp checkpoint still counts
    msg = _refused(capfd, _argv(run_dir, run=ZEROSHOT))
    assert "TRAINER.NAME: 'CoOp' -> 'ZeroshotCLIP'" in msg
    assert _snapshot(run_dir) == before


def test_keys_that_cannot_change_the_result_are_ignored(run_dir):
    train.main(_argv(run_dir, "TRAIN.PRINT_FREQ", "1", "TRAIN.CHECKPOINT_FREQ", "1",
                     "DATALOADER.NUM_WORKERS", "0", "TEST.PER_CLASS_RESULT", "True"))
    log = next(run_dir.glob("log.txt-*")).read_text()
    assert "Previous epoch: 1" in log and "epoch [1/1]" not in log  # the finished run resumed
    assert "PRINT_FREQ: 1" in (run_dir / run_folder.RECORD_FILE).read_text()  # the record follows


def test_a_record_without_anything_to_resume_does_not_count(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / run_folder.RECORD_FILE).write_text("OPTIM:\n  LR: 0.5\n")  # a run killed before its first save
    train.main(_argv(out))
    assert "LR: 0.5" not in (out / run_folder.RECORD_FILE).read_text()


def test_training_into_the_folder_of_an_eval_only_run_is_refused(capfd, tmp_path):
    out = tmp_path / "zs"
    train.main(_argv(out, run=ZEROSHOT, flags=["--eval-only"]))
    msg = _refused(capfd, _argv(out, run=ZEROSHOT))
    assert "--eval-only run" in msg and "--output-dir" in msg


def test_resuming_a_checkpoint_of_another_config_is_refused_inside_a_host(run_dir, tmp_path):
    """A host code base's train.py resumes through ClipTrainer.resume_model_if_exist only."""
    trainer = train.main(_argv(tmp_path / "other", "OPTIM.LR", "0.05", flags=["--no-train"]))
    with pytest.raises(UserError, match=r"prompt_learner/model\.pth\.tar-1 was made with another config "
                                        r"\(OPTIM\.LR: 0\.002 -> 0\.05\): use another --output-dir"):
        trainer.resume_model_if_exist(str(run_dir))


def test_config_changes_names_a_few_keys_in_one_line():
    from gopro_prompts.trainers.config import default_cfg

    cfg = default_cfg()
    stored = cfg.clone()
    stored.OPTIM.LR, stored.OPTIM.MAX_EPOCH, stored.SEED, stored.INPUT.SIZE = 9.0, 99, 7, (8, 8)
    stored.DATASET.NUM_SHOTS, stored.OUTPUT_DIR, stored.DATASET.ROOT = 3, "elsewhere", "/moved"
    changes = run_folder.config_changes(stored.dump(), cfg)
    assert len(changes) == 5 and "INPUT.SIZE: [8, 8] -> [224, 224]" in changes
    error = str(run_folder.changed_config_error("the run in X", changes, "X"))
    assert "\n" not in error and error.count(" -> ") == run_folder.SHOWN_CHANGES and "and 1 more" in error
    assert run_folder.config_changes(cfg.dump(), cfg) == []


# ------------------------------------------------------------------------ 2. offline folder per override set
def _offline_dir(*argv):
    cfg, offline = train.setup_cfg(train.get_parser().parse_args(["--trainer", "CoOp", *argv]))
    assert offline
    return cfg.OUTPUT_DIR


def test_offline_default_gets_a_folder_per_set_of_overrides():
    base = os.path.join("output", "offline", "CoOp")
    assert _offline_dir() == os.path.join(base, "seed1")  # no overrides: the folder of before
    assert _offline_dir("--seed", "3", "TRAIN.PRINT_FREQ", "1") == os.path.join(base, "seed3")
    assert _offline_dir("OPTIM.LR", "0.05") == os.path.join(base, "OPTIM.LR=0.05", "seed1")
    both = os.path.join(base, "OPTIM.LR=0.05,OPTIM.MAX_EPOCH=5", "seed2")
    assert _offline_dir("--seed", "2", "OPTIM.MAX_EPOCH", "5", "OPTIM.LR", "5e-2") == both
    long = _offline_dir("TRAINER.COOP.CTX_INIT", "a photo of the", "OPTIM.LR", "0.05")
    name = Path(long).parent.name
    assert name.startswith("opts-") and len(name) == 15 and Path(long).name == "seed1"
    assert _offline_dir("OPTIM.LR", "0.05", "TRAINER.COOP.CTX_INIT", "a photo of the") == long
    assert _offline_dir("--backbone", "tiny") == os.path.join(base, "MODEL.BACKBONE.NAME=tiny", "seed1")
    assert _offline_dir("--output-dir", "mine") == "mine"


def test_trying_a_value_on_the_offline_default_trains_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = train.main([*RUN])
    second = train.main([*RUN, "OPTIM.LR", "0.05"])
    assert second.output_dir != first.output_dir and second.cfg.OPTIM.LR == 0.05
    assert "epoch [1/1]" in (Path(second.output_dir) / "log.txt").read_text()  # trained, not the old result
    record = json.loads((Path(second.output_dir) / "results.json").read_text())
    assert record["epoch"] == 1


# ------------------------------------------------------------------------ 3. --eval-only never overwrites
def test_eval_only_without_output_dir_writes_under_the_model_folder(run_dir):
    results = (run_dir / "results.json").read_bytes()
    train.main(["--eval-only", "--model-dir", str(run_dir), "--load-epoch", "1", *RUN,
                "DATASET.SUBSAMPLE_CLASSES", "new"])
    assert (run_dir / "results.json").read_bytes() == results
    record = json.loads((run_dir / "eval" / "SyntheticShapes_new_epoch1" / "results.json").read_text())
    assert record["eval_only"] and record["subsample"] == "new" and record["load_epoch"] == 1


def test_eval_only_into_a_training_folder_is_refused(capfd, run_dir):
    before = _snapshot(run_dir)
    msg = _refused(capfd, _argv(run_dir, flags=["--eval-only", "--model-dir", str(run_dir), "--load-epoch", "1"]))
    assert f"{run_dir} holds a training run" in msg and "--output-dir" in msg
    assert _snapshot(run_dir) == before


# ------------------------------------------------------------------------ 4. the epoch of model-best
def test_best_val_records_the_epoch_of_the_best_model(tmp_path, monkeypatch):
    from gopro_prompts.trainers.base import ClipTrainer

    test = ClipTrainer.test

    def epoch_1_is_best(self, split=None):
        result = test(self, split)
        return 50.0 - self.epoch if split == "val" else result

    monkeypatch.setattr(ClipTrainer, "test", epoch_1_is_best)
    out = tmp_path / "best"
    train.main(_argv(out, "OPTIM.MAX_EPOCH", "2", "TEST.FINAL_MODEL", "best_val"))
    assert "Deploy the model with the best val performance" in (out / "log.txt").read_text()
    assert json.loads((out / "results.json").read_text())["epoch"] == 1


# ------------------------------------------------------------------------ 5. permissions
def test_results_and_record_get_the_permissions_of_any_file(tmp_path):
    from gopro_prompts.trainers.config import default_cfg

    old = os.umask(0o022)
    try:
        run_results.write_results(str(tmp_path), {"metrics": {}})
        cfg = default_cfg()
        cfg.OUTPUT_DIR = str(tmp_path)
        run_folder.write_record(cfg)
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert mode == 0o644
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / run_folder.RECORD_FILE).stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == [run_folder.RECORD_FILE, "plain.txt", "results.json"]
