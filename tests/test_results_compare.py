"""scripts/compare.sh: argument handling (dry run) and end to end on the offline dataset with the tiny CLIP."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gopro_prompts import dassl_compat

REPO = Path(__file__).resolve().parents[1]
COMPARE = REPO / "scripts" / "compare.sh"
TINY = ["MODEL.BACKBONE.NAME", "tiny", "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def compare(tmp_path, *args, timeout=300, **env):
    full_env = {**os.environ, "PYTHON": sys.executable,
                "DATA": str(tmp_path / "data"), "OUTPUT": str(tmp_path / "output"), **env}
    for key in ("CFG", "LOAD_EPOCH", "SHOTS", "XD_SOURCE"):
        if key not in env:
            full_env.pop(key, None)
    return subprocess.run(["bash", str(COMPARE), *args], cwd=tmp_path, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def test_dry_run_uses_each_method_s_official_config_and_the_same_seeds(tmp_path):
    (tmp_path / "data").mkdir()
    proc = compare(tmp_path, "base2new", "synthetic_shapes", "1,2", *TINY, DRY_RUN="1", CFG="not_a_config")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    commands = [line for line in out.splitlines() if line.startswith("(dry run)") and "train.py" in line]
    # zero-shot CLIP: base and new once; 9 methods x 2 seeds x (train + test)
    assert len(commands) == 2 + 9 * 2 * 2
    for config in ("CoOp/vit_b16_ep50_ctxv1", "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1",
                   "MaPLe/vit_b16_c2_ep5_batch4_2ctx", "GOPro/vit_b16", "KgCoOp/vit_b16_ep100_ctxv1",
                   "ProGrad/vit_b16_ep100_ctxv1", "VPT/vit_b16_c2_ep5_batch4_4", "IVLP/vit_b16_c2_ep5_batch4_2+2ctx",
                   "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx"):
        assert sum(f"configs/trainers/{config}.yaml" in c for c in commands) == 4, config
    zero_shot = [c for c in commands if "--trainer ZeroshotCLIP" in c]
    assert len(zero_shot) == 2 and all("configs/trainers/CoOp/vit_b16.yaml" in c for c in zero_shot)
    assert all("--seed 1 " in c or "--seed 2 " in c for c in commands)
    assert "not_a_config" not in out  # CFG is not applied to every method
    assert ("--trainers ZeroshotCLIP,CoOp,CoCoOp,KgCoOp,ProGrad,VPT,IVLP,MaPLe,PromptSRC,GOPro --seeds 1,2 "
            "--shots 16") in out


def test_offline_preset_uses_the_pretrained_tiny_clip_and_later_opts_win(tmp_path):
    proc = compare(tmp_path, "offline", "CoOp", "MODEL.BACKBONE.NAME", "tiny", DRY_RUN="1")
    assert proc.returncode == 0, proc.stderr
    commands = [line.split() for line in proc.stdout.splitlines()
                if line.startswith("(dry run)") and "train.py" in line]
    assert len(commands) == 2  # CoOp: train on the base classes, test on the new ones
    for cmd in commands:
        names = [cmd[i + 1] for i, tok in enumerate(cmd) if tok == "MODEL.BACKBONE.NAME"]
        assert names == ["tiny-synthetic", "tiny"]  # the preset, then the user's choice
        assert "configs/datasets/synthetic_shapes.yaml" in cmd and "--seed" in cmd


@pytest.mark.parametrize("args, message", [
    (["nope", "synthetic_shapes", "1"], "unknown protocol"),
    (["base2new", "synthetic_shapes"], "usage"),
    (["base2new", "synthetic_shapes", "1", "CoOp,Nope"], "unknown trainer 'Nope'"),
    (["base2new", "no_such_dataset", "1"], "unknown dataset 'no_such_dataset'"),
    (["base2new", "synthetic_shapes", "x"], "SEED must be a non-negative integer"),
    (["base2new", "synthetic_shapes", "1", "OPTIM.MAX_EPOCH"], "KEY VALUE pairs"),
])
def test_bad_arguments_give_one_line(tmp_path, args, message):
    (tmp_path / "data").mkdir()
    proc = compare(tmp_path, *args, DRY_RUN="1")
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.startswith("error: ")


def test_base2new_end_to_end_on_the_offline_dataset(tmp_path):
    """Zero-shot CLIP and CoOp, 1 seed, 1 epoch, 2 shots: the runs, then the table."""
    args = ["base2new", "synthetic_shapes", "1", "ZeroshotCLIP,CoOp", *TINY, "OPTIM.MAX_EPOCH", "1",
            "DATASET.NUM_SHOTS", "2"]
    proc = compare(tmp_path, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    table = out[out.index("Base-to-new generalisation"):]
    assert "SyntheticShapes  ZeroshotCLIP" in table and "SyntheticShapes  CoOp" in table
    assert "Average (1)" in table and "†" not in table

    output = tmp_path / "output"
    tail = Path("synthetic_shapes") / "shots_2"
    coop_base = output / "base2new" / "train_base" / tail / "CoOp" / "vit_b16_ep50_ctxv1" / "seed1"
    coop_new = output / "base2new" / "test_new" / tail / "CoOp" / "vit_b16_ep50_ctxv1" / "seed1"
    zs_base = output / "base2new" / "test_base" / tail / "ZeroshotCLIP" / "vit_b16" / "seed1"
    records = {name: json.loads((path / "results.json").read_text())
               for name, path in (("coop_base", coop_base), ("coop_new", coop_new), ("zs_base", zs_base))}
    assert records["coop_base"]["subsample"] == "base" and records["coop_new"]["subsample"] == "new"
    assert records["coop_new"]["eval_only"] and records["coop_new"]["load_epoch"] == 1
    assert {r["backend"] for r in records.values()} == {dassl_compat.BACKEND}  # this leg's backend

    # the saved table holds the runs' own numbers
    saved = json.loads((output / "compare" / "base2new.json").read_text())
    coop_row = [r for r in saved["rows"] if r["method"] == "CoOp"][0]
    assert coop_row["base"]["mean"] == pytest.approx(records["coop_base"]["metrics"]["accuracy"])
    assert coop_row["new"]["mean"] == pytest.approx(records["coop_new"]["metrics"]["accuracy"])
    for suffix in ("md", "csv", "txt"):
        assert (output / "compare" / f"base2new.{suffix}").stat().st_size > 0
    assert (output / "compare" / "base2new.png").stat().st_size > 5000

    # every method read the same few-shot cache (written by the first run)
    assert (tmp_path / "data" / "synthetic_shapes" / "split_fewshot" / "shot_2-seed_1.pkl").is_file()
    assert "Loading preprocessed few-shot data" in (coop_base / "log.txt").read_text()

    # a second call skips the finished runs and prints the same table
    again = compare(tmp_path, *args)
    assert again.returncode == 0
    assert again.stdout.count("(so skip this job)") == 4
    assert again.stdout[again.stdout.index("Base-to-new generalisation"):].split("Saved")[0] == \
        table.split("Saved")[0]
