"""The experiment scripts (scripts/{coop,cocoop,maple}) and the trainer config files."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gopro_prompts import dassl_compat
from gopro_prompts.dassl_compat import load_checkpoint
from gopro_prompts.trainers.config import default_cfg

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
#: tiny backbone and a one-epoch schedule on the offline dataset (the user's opts win over the scripts')
TINY = ["MODEL.BACKBONE.NAME", "tiny", "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", "1",
        "DATALOADER.NUM_WORKERS", "0"]


def _run(script, *args, env=None, cwd=None, check=True):
    """Run ``bash scripts/<script>`` from a directory outside the repository."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(["bash", str(SCRIPTS / script), *map(str, args)], env=full_env,
                            cwd=cwd, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture
def env(tmp_path, synthetic_root):
    # one thread per run: the tiny model gains nothing from more, and CI machines are shared
    return {"DATA": synthetic_root, "OUTPUT": str(tmp_path / "output"), "PYTHON": sys.executable, "SHOTS": "2",
            "OMP_NUM_THREADS": "1"}


def _dry_command(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("(dry run) ")]
    assert len(lines) == 1, stdout
    return lines[0].split()[4:]  # after "(dry run) PYTHON train.py"


def _flag(cmd, name):
    return cmd[cmd.index(name) + 1]


# ------------------------------------------------------------------ end to end
def test_cocoop_base2new_train_then_test_then_skip(env, tmp_path):
    out = Path(env["OUTPUT"])
    tail = "synthetic_shapes/shots_2/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1/seed1"
    train = _run("cocoop/base2new_train.sh", "synthetic_shapes", 1, *TINY, env=env, cwd=tmp_path)
    train_dir = out / "base2new/train_base" / tail
    assert f"Run this job and save the output to {train_dir}" in train.stdout
    log = (train_dir / "log.txt").read_text()
    assert "Finish training" in log and "SUBSAMPLE BASE CLASSES!" in log
    assert f"Dassl backend: {dassl_compat.BACKEND}" in log  # the script's run is on this leg's backend
    assert (train_dir / "prompt_learner" / "model.pth.tar-1").is_file()

    test = _run("cocoop/base2new_test.sh", "synthetic_shapes", 1, *TINY, env=env, cwd=tmp_path)
    test_dir = out / "base2new/test_new" / tail
    assert f"Evaluate and save the output to {test_dir}" in test.stdout
    log = (test_dir / "log.txt").read_text()
    assert f'from "{train_dir}/prompt_learner/model.pth.tar-1"' in log  # LOAD_EPOCH follows OPTIM.MAX_EPOCH
    assert "SUBSAMPLE NEW CLASSES!" in log and "* accuracy:" in log

    for script, folder in (("cocoop/base2new_train.sh", train_dir), ("cocoop/base2new_test.sh", test_dir)):
        again = _run(script, "synthetic_shapes", 1, *TINY, env=env, cwd=tmp_path)
        assert f"Oops! The results exist at {folder} (so skip this job)" in again.stdout
        assert sorted(p.name for p in folder.glob("log.txt*")) == ["log.txt"]


def test_maple_base2new_train(env, tmp_path):
    _run("maple/base2new_train.sh", "synthetic_shapes", 2, *TINY, "TRAINER.MAPLE.PROMPT_DEPTH", 2,
         "TRAINER.MAPLE.PREC", "fp32", env=env, cwd=tmp_path)
    run_dir = Path(env["OUTPUT"]) / "base2new/train_base/synthetic_shapes/shots_2/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed2"
    assert "Finish training" in (run_dir / "log.txt").read_text()
    assert (run_dir / "MultiModalPromptLearner" / "model.pth.tar-1").is_file()


def test_coop_main_one_seed(env, tmp_path):
    _run("coop/main.sh", "synthetic_shapes", "vit_b16", "end", 4, 2, "False", *TINY,
         env={**env, "SEEDS": "3"}, cwd=tmp_path)
    run_dir = Path(env["OUTPUT"]) / "synthetic_shapes/CoOp/vit_b16_2shots/nctx4_cscFalse_ctpend/seed3"
    assert "Finish training" in (run_dir / "log.txt").read_text()
    ckpt = load_checkpoint(str(run_dir / "prompt_learner" / "model.pth.tar-1"))
    assert ckpt["state_dict"]["ctx"].shape[0] == 4  # NCTX reached the trainer


# ------------------------------------------------------------ commands (dry runs)
@pytest.mark.parametrize("script,args,trainer,cfg,out_tail,model_tail,epoch,opts", [
    ("cocoop/base2new_train.sh", ["oxford_pets", 1], "CoCoOp", "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1",
     "base2new/train_base/oxford_pets/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1/seed1", None, None,
     ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base"]),
    ("cocoop/base2new_test.sh", ["oxford_pets", 1], "CoCoOp", "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1",
     "base2new/test_new/oxford_pets/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1/seed1",
     "base2new/train_base/oxford_pets/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1/seed1", "10",
     ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "new"]),
    ("cocoop/xd_train.sh", [2], "CoCoOp", "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1",
     "imagenet/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1_16shots/seed2", None, None, ["DATASET.NUM_SHOTS", "16"]),
    ("cocoop/xd_test.sh", ["imagenet_a", 2], "CoCoOp", "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1",
     "evaluation/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1_16shots/imagenet_a/seed2",
     "imagenet/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1_16shots/seed2", "10", []),
    ("maple/base2new_test.sh", ["dtd", 3], "MaPLe", "MaPLe/vit_b16_c2_ep5_batch4_2ctx",
     "base2new/test_new/dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed3",
     "base2new/train_base/dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed3", "5",
     ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "new"]),
    ("maple/xd_train.sh", [1], "MaPLe", "MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets",
     "imagenet/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots/seed1", None, None,
     ["DATASET.NUM_SHOTS", "16"]),
    ("maple/xd_test.sh", ["caltech101", 1], "MaPLe", "MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets",
     "evaluation/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots/caltech101/seed1",
     "imagenet/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots/seed1", "2", []),
    ("coop/base2new_test.sh", ["eurosat", 1], "CoOp", "CoOp/vit_b16_ep50_ctxv1",
     "base2new/test_new/eurosat/shots_16/CoOp/vit_b16_ep50_ctxv1/seed1",
     "base2new/train_base/eurosat/shots_16/CoOp/vit_b16_ep50_ctxv1/seed1", "50",
     ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "new"]),
    ("coop/zeroshot.sh", ["oxford_pets", "rn50"], "ZeroshotCLIP", "CoOp/rn50", "ZeroshotCLIP/rn50/oxford_pets",
     None, None, []),
])
def test_script_commands(tmp_path, script, args, trainer, cfg, out_tail, model_tail, epoch, opts):
    env = {"DATA": str(tmp_path), "OUTPUT": "rel/out", "DRY_RUN": "1", "PYTHON": sys.executable}
    result = _run(script, *args, "OPTIM.LR", "0.1", env=env, cwd=tmp_path)
    cmd = _dry_command(result.stdout)
    out = tmp_path / "rel" / "out"  # a relative OUTPUT is taken from the caller's directory
    assert _flag(cmd, "--root") == str(tmp_path)
    assert _flag(cmd, "--trainer") == trainer
    assert _flag(cmd, "--config-file") == f"configs/trainers/{cfg}.yaml"
    assert _flag(cmd, "--dataset-config-file") == f"configs/datasets/{args[0] if len(args) > 1 else 'imagenet'}.yaml"
    assert _flag(cmd, "--output-dir") == str(out / out_tail)
    if model_tail:
        assert _flag(cmd, "--model-dir") == str(out / model_tail)
        assert _flag(cmd, "--load-epoch") == epoch and "--eval-only" in cmd
    elif trainer != "ZeroshotCLIP":
        assert "--eval-only" not in cmd and "--model-dir" not in cmd
    if trainer == "ZeroshotCLIP":
        assert "--seed" not in cmd and "--eval-only" in cmd
    else:
        assert _flag(cmd, "--seed") == str(args[-1])
    # the script's opts, then the user's (which win)
    first_opt = next(i for i, tok in enumerate(cmd) if re.fullmatch(r"[A-Z_]+(\.[A-Z_]+)+", tok))
    assert cmd[first_opt:] == opts + ["OPTIM.LR", "0.1"]


def test_load_epoch_follows_the_env_then_the_opts(tmp_path):
    env = {"DATA": str(tmp_path), "OUTPUT": str(tmp_path), "DRY_RUN": "1", "PYTHON": sys.executable}
    cmd = _dry_command(_run("cocoop/base2new_test.sh", "dtd", 1, "OPTIM.MAX_EPOCH", 3, env=env).stdout)
    assert _flag(cmd, "--load-epoch") == "3"
    cmd = _dry_command(_run("cocoop/base2new_test.sh", "dtd", 1, "OPTIM.MAX_EPOCH", 3,
                            env={**env, "LOAD_EPOCH": "7"}).stdout)
    assert _flag(cmd, "--load-epoch") == "7"
    cmd = _dry_command(_run("maple/base2new_test.sh", "dtd", 1, env={**env, "CFG": "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"}).stdout)
    assert _flag(cmd, "--load-epoch") == "2"


def test_coop_eval_loops_over_seeds_with_the_imagenet_model(tmp_path):
    env = {"DATA": str(tmp_path), "OUTPUT": str(tmp_path), "DRY_RUN": "1", "SEEDS": "1 2",
           "PYTHON": sys.executable}
    result = _run("coop/eval.sh", "imagenetv2", "vit_b16_ep50", env=env)
    cmds = [line.split()[4:] for line in result.stdout.splitlines() if line.startswith("(dry run)")]
    assert len(cmds) == 2
    for seed, cmd in zip((1, 2), cmds):
        tail = "CoOp/vit_b16_ep50_16shots/nctx16_cscFalse_ctpend"
        assert _flag(cmd, "--model-dir") == f"{tmp_path}/imagenet/{tail}/seed{seed}"
        assert _flag(cmd, "--output-dir") == f"{tmp_path}/evaluation/{tail}/imagenetv2/seed{seed}"
        assert _flag(cmd, "--load-epoch") == "50"
        assert cmd[-6:] == ["TRAINER.COOP.N_CTX", "16", "TRAINER.COOP.CSC", "False",
                            "TRAINER.COOP.CLASS_TOKEN_POSITION", "end"]


# ------------------------------------------------------- finished / unfinished runs
def _write_run(folder, log):
    folder.mkdir(parents=True)
    (folder / "log.txt").write_text(log)


def test_finished_run_is_skipped_and_unfinished_one_resumes(tmp_path):
    env = {"DATA": str(tmp_path), "OUTPUT": str(tmp_path / "out"), "PYTHON": "true"}  # `true` stands in for python
    run_dir = tmp_path / "out/base2new/train_base/dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed1"
    _write_run(run_dir, "epoch [1/5] ...\n")  # crashed during training
    result = _run("maple/base2new_train.sh", "dtd", 1, env=env)
    assert f"Resuming the unfinished run in {run_dir}" in result.stdout
    kept = [p.name for p in run_dir.glob("log.txt-unfinished-*")]
    assert len(kept) == 1 and not (run_dir / "log.txt").exists()  # log.txt is left to the resumed run

    (run_dir / "log.txt").write_text("...\nFinish training\nDeploy the last-epoch model\n* accuracy: 50.0%\nElapsed: 0:01:00\n")
    result = _run("maple/base2new_train.sh", "dtd", 1, env={**env, "DRY_RUN": "1"})
    assert f"Oops! The results exist at {run_dir} (so skip this job)" in result.stdout
    assert "(dry run)" not in result.stdout

    test_dir = tmp_path / "out/base2new/test_new/dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed1"
    _write_run(test_dir, "Loading weights to MultiModalPromptLearner\n")  # evaluation that crashed
    result = _run("maple/base2new_test.sh", "dtd", 1, env={**env, "DRY_RUN": "1", "LOAD_EPOCH": "5"})
    assert "Re-running the unfinished evaluation" in result.stdout and "(dry run)" in result.stdout


def test_finished_results_of_another_backbone_stop_the_job(tmp_path):
    """A finished run is skipped: results of another backbone must not stand in for this one's."""
    env = {"DATA": str(tmp_path), "OUTPUT": str(tmp_path / "out"), "PYTHON": sys.executable, "DRY_RUN": "1"}
    tail = "dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed1"
    train_dir, test_dir = tmp_path / "out/base2new/train_base" / tail, tmp_path / "out/base2new/test_new" / tail
    _write_run(train_dir, "Finish training\n* accuracy: 50.0%\nElapsed: 0:01:00\n")
    _write_run(test_dir, "* accuracy: 40.0%\n")
    for folder in (train_dir, test_dir):
        (folder / "results.json").write_text('{"backbone": "ViT-B/16"}')
    laion = ["MODEL.BACKBONE.NAME", "open_clip:ViT-B-16/laion2b_s34b_b88k"]
    for script, folder in (("maple/base2new_train.sh", train_dir), ("maple/base2new_test.sh", test_dir)):
        same = _run(script, "dtd", 1, env=env)  # the config's ViT-B/16, as recorded: skipped
        assert f"Oops! The results exist at {folder} (so skip this job)" in same.stdout
        other = _run(script, "dtd", 1, *laion, env=env, check=False)
        assert other.returncode == 2 and "(dry run)" not in other.stdout
        assert other.stderr.strip() == (
            f"error: {folder} holds finished results of MODEL.BACKBONE.NAME ViT-B/16, not "
            "open_clip:ViT-B-16/laion2b_s34b_b88k: finished runs are skipped, so give this backbone an OUTPUT "
            "folder of its own (e.g. OUTPUT=output/my_backbone)")


# ------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args,env_extra,message", [
    (["dtd", 1], {"DATA": ""}, "DATA is not set"),
    (["dtd", 1], {"DATA": "/nonexistent/data"}, "is not a directory"),
    (["dtd"], {}, "usage: bash"),
    (["no_such_set", 1], {}, "unknown dataset 'no_such_set'"),
    (["dtd", "x"], {}, "SEED must be a non-negative integer"),
    (["dtd", 1], {"CFG": "nope"}, "unknown config 'nope' for CoCoOp"),
])
def test_bad_input_is_one_clear_error(tmp_path, args, env_extra, message):
    env = {"DATA": str(tmp_path), "OUTPUT": str(tmp_path), "DRY_RUN": "1", **env_extra}
    result = _run("cocoop/base2new_train.sh", *args, env=env, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_script_is_executable_and_valid_bash():
    scripts = sorted(SCRIPTS.glob("*/*.sh"))
    assert {p.parent.name for p in scripts} >= {"coop", "cocoop", "maple"}
    for path in scripts + [SCRIPTS / "_common.sh"]:
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, path
    for path in scripts:
        assert os.access(path, os.X_OK), path
        assert "_common.sh" in path.read_text(), path


# --------------------------------------------------------------- config files
EXPECTED = {
    ("CoOp", "rn50"): dict(MAX_EPOCH=200, LR=0.002, BACKBONE="RN50", BATCH=32),
    ("CoOp", "rn50_ep50_ctxv1"): dict(MAX_EPOCH=50, LR=0.002, BACKBONE="RN50", BATCH=32, COOP_CTX="a photo of a"),
    ("CoOp", "vit_b16_ep100"): dict(MAX_EPOCH=100, LR=0.002, BACKBONE="ViT-B/16", BATCH=32),
    ("CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1"): dict(MAX_EPOCH=10, LR=0.002, BACKBONE="ViT-B/16", BATCH=1),
    ("CoCoOp", "vit_b16_c16_ep10_batch1"): dict(MAX_EPOCH=10, LR=0.002, BACKBONE="ViT-B/16", BATCH=1),
    ("MaPLe", "vit_b16_c2_ep5_batch4_2ctx"): dict(MAX_EPOCH=5, LR=0.0035, BACKBONE="ViT-B/16", BATCH=4, DEPTH=9),
    ("MaPLe", "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"): dict(MAX_EPOCH=2, LR=0.0026, BACKBONE="ViT-B/16",
                                                                  BATCH=4, DEPTH=3),
}


def test_every_trainer_config_merges():
    files = sorted((REPO / "configs" / "trainers").glob("*/*.yaml"))
    names = {(p.parent.name, p.stem) for p in files}
    assert {("CoCoOp", "vit_b16_c4_ep10_batch1"), ("CoCoOp", "vit_b16_c8_ep10_batch1"),
            ("CoOp", "rn101_ep50"), ("CoOp", "vit_b32_ep50"), ("CoOp", "vit_b16_ep50_ctxv1")} <= names
    for path in files:
        if path.parent.name not in ("CoOp", "CoCoOp", "MaPLe"):
            continue
        cfg = default_cfg()
        cfg.merge_from_file(str(path))  # plain yacs, as the official train.py merges them
        assert cfg.INPUT.INTERPOLATION == "bicubic" and cfg.DATALOADER.NUM_WORKERS == 8
        assert list(cfg.INPUT.PIXEL_MEAN) == [0.48145466, 0.4578275, 0.40821073]
        if path.stem != "rn50_val":
            assert cfg.OPTIM.NAME == "sgd" and cfg.OPTIM.LR_SCHEDULER == "cosine"
            assert cfg.OPTIM.WARMUP_EPOCH == 1 and cfg.OPTIM.WARMUP_TYPE == "constant"
            assert cfg.OPTIM.WARMUP_CONS_LR == 1e-5 and cfg.DATALOADER.TEST.BATCH_SIZE == 100
        want = EXPECTED.get((path.parent.name, path.stem))
        if want:
            assert cfg.OPTIM.MAX_EPOCH == want["MAX_EPOCH"] and cfg.OPTIM.LR == want["LR"]
            assert cfg.MODEL.BACKBONE.NAME == want["BACKBONE"]
            assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == want["BATCH"]
            if "DEPTH" in want:
                assert cfg.TRAINER.MAPLE.PROMPT_DEPTH == want["DEPTH"] and cfg.TRAINER.MAPLE.N_CTX == 2
            if "COOP_CTX" in want:
                assert cfg.TRAINER.COOP.CTX_INIT == want["COOP_CTX"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_synthetic_benchmark_runs_gopro_beside_the_others(tmp_path, jobs):
    """JOBS=2 splits the runs into a GOPro worker and one for the rest; a dry run writes no results."""
    results = tmp_path / "results.md"
    env = {"DATA": str(tmp_path / "data"), "OUTPUT": str(tmp_path / "out"), "RESULTS": str(results),
           "DRY_RUN": "1", "SEEDS": "1", "JOBS": jobs, "PYTHON": sys.executable}
    result = _run("synthetic_benchmark.sh", env=env)
    assert not results.exists() and "(dry run) then: write" in result.stdout

    def trainers(text):
        return {_flag(line.split(), "--trainer") for line in text.splitlines()
                if line.startswith("(dry run) ") and " train.py " in line}

    # the final pass covers every method (in a real run, every job is then already finished and skipped)
    others = {"ZeroshotCLIP", "CoOp", "CoCoOp", "KgCoOp", "ProGrad", "VPT", "IVLP", "MaPLe", "PromptSRC"}
    assert trainers(result.stdout) == others | {"GOPro"}
    logs = tmp_path / "out" / "logs"
    if jobs == "1":
        assert not logs.exists()
    else:
        assert trainers((logs / "GOPro.log").read_text()) == {"GOPro"}
        assert trainers((logs / "others.log").read_text()) == others
