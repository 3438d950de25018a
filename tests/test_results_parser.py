"""parse_test_res.py and gopro_prompts/results/runs.py on generated output trees (results.json, old logs, re-run logs)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import parse_test_res
from gopro_prompts.results.record import write_results
from gopro_prompts.results import runs as runs_mod


# ----------------------------------------------------------------------------- tree generators
def result_block(acc, total=1000):
    """The evaluator's printed block (Dassl's ``Classification.evaluate``), values with one decimal."""
    return ["=> result", f"* total: {total:,}", f"* correct: {round(total * acc / 100):,}",
            f"* accuracy: {acc:.1f}%", f"* error: {100 - acc:.1f}%", "* macro_f1: 50.0%"]


def make_log(*, trainer="CoOp", dataset="OxfordPets", subsample="base", shots=16, seed=1, config="vit_b16_ep50",
             accuracy=None, eval_only=False, marker="Finish training", val_blocks=(), target_domains="()",
             backbone="ViT-B/16"):
    """A Dassl-style log: arguments, the yacs config dump, training, the end marker, the test block."""
    lines = ["Setting fixed seed: 1", "***************", "** Arguments **", "***************",
             f"config_file: configs/trainers/{trainer}/{config}.yaml",
             "dataset_config_file: configs/datasets/whatever.yaml", f"eval_only: {eval_only}",
             "load_epoch: None", "model_dir: ", f"opts: ['DATASET.NUM_SHOTS', '{shots}']", f"seed: {seed}",
             f"trainer: {trainer}", "************", "** Config **", "************",
             "DATALOADER:", "  TRAIN_X:", "    BATCH_SIZE: 32", "DATASET:", f"  NAME: {dataset}",
             f"  NUM_SHOTS: {shots}", "  ROOT: /data", "  SOURCE_DOMAINS: ()", f"  SUBSAMPLE_CLASSES: {subsample}",
             f"  TARGET_DOMAINS: {target_domains}", "MODEL:", "  BACKBONE:", f"    NAME: {backbone}",
             "  INIT_WEIGHTS: ", f"SEED: {seed}", "TRAINER:", "  COOP:", "    N_CTX: 16", f"  NAME: {trainer}",
             "USE_CUDA: True", "Collecting env info ...", "** System info **", "PyTorch version: 2.0"]
    for value in val_blocks:  # per-epoch validation before the marker: never counted
        lines += ["Evaluate on the *val* set", *result_block(value)]
    if not eval_only:
        lines.append("epoch [1/1] batch [1/1] time 0.1 (0.1) loss 1.0 (1.0) acc 50.0 (50.0) lr 2.0e-03 eta 0:00:00")
    if accuracy is not None:
        if not eval_only:
            lines += [marker, "Deploy the last-epoch model"]
        lines += ["Evaluate on the *test* set", *result_block(accuracy), "Elapsed: 0:00:01"]
    return "\n".join(lines) + "\n"


def write_log(run_dir, name="log.txt", **kwargs):
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / name).write_text(make_log(**kwargs))
    return run_dir / name


def write_record(run_dir, *, accuracy, trainer="CoOp", dataset="OxfordPets", subsample="base", shots=16, seed=1,
                 config="vit_b16_ep50", eval_only=False, finished_at="2024-01-01T12:00:00", backbone="ViT-B/16",
                 target_domains=(), macro_f1=50.0):
    """A results.json as gopro_prompts/results/record.py writes it (the fields the readers use)."""
    record = {
        "schema": 1, "trainer": trainer, "config": config, "config_file": f"configs/trainers/{trainer}/{config}.yaml",
        "dataset_config_file": "", "dataset": dataset, "subsample": subsample, "shots": shots, "seed": seed,
        "source_domains": [], "target_domains": list(target_domains), "backbone": backbone, "split": "test",
        "epoch": None if eval_only else 5, "eval_only": eval_only, "model_dir": "", "load_epoch": None,
        "metrics": {"accuracy": accuracy, "error_rate": 100 - accuracy, "macro_f1": macro_f1},
        "backend": "bundled", "versions": {}, "finished_at": finished_at,
    }
    return write_results(str(run_dir), record)


def run_parser(capsys, *argv):
    code = parse_test_res.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def summary_line(out, keyword="accuracy"):
    lines = [line for line in out.splitlines() if line.startswith(f"* {keyword}:")]
    assert lines, out
    return lines[-1]


# ------------------------------------------------------------------------------------- tests
def test_complete_tree_of_results_json_mean_std_and_ci95(tmp_path, capsys):
    exp = tmp_path / "CoCoOp" / "cfg"
    for seed, acc in ((1, 80.0), (2, 82.0), (3, 84.5)):
        write_record(exp / f"seed{seed}", accuracy=acc, seed=seed)
    (exp / "notes.txt").write_text("a file next to the seed folders is ignored")
    code, out, _ = run_parser(capsys, exp)
    assert code == 0
    # hand-computed: mean 82.1667; population std sqrt((2.1667² + 0.1667² + 2.3333²) / 3) = 1.8409
    assert summary_line(out) == "* accuracy: 82.17% +- 1.84%"
    assert f"file: {exp / 'seed1' / 'results.json'}. accuracy: 80.00%. " in out.splitlines()
    assert out.splitlines()[0] == f"Parsing files in {exp}"
    assert f"Summary of directory: {exp}" in out
    code, out, _ = run_parser(capsys, exp, "--ci95")
    assert summary_line(out) == "* accuracy: 82.17% +- 2.08%"  # 1.96 * 1.8409 / sqrt(3)
    code, out, _ = run_parser(capsys, exp, "--keyword", "error")
    assert summary_line(out, "error") == "* error: 17.83% +- 1.84%"


def test_results_json_is_preferred_over_the_rounded_log(tmp_path, capsys):
    run = tmp_path / "exp" / "seed1"
    write_log(run, accuracy=82.3456)  # the log shows 82.3
    write_record(run, accuracy=82.3456)
    code, out, _ = run_parser(capsys, tmp_path / "exp")
    assert code == 0 and summary_line(out).startswith("* accuracy: 82.35%")
    os.remove(run / "results.json")
    code, out, _ = run_parser(capsys, tmp_path / "exp")
    assert code == 0 and summary_line(out).startswith("* accuracy: 82.30%")
    assert f"file: {run / 'log.txt'}." in out


def test_old_style_logs_only(tmp_path, capsys):
    exp = tmp_path / "train_base"
    # validation blocks precede the end marker and are ignored; the last block after it wins
    write_log(exp / "seed1", accuracy=70.0, val_blocks=(10.0, 99.9))
    write_log(exp / "seed2", accuracy=72.0, marker="Finished training")  # MaPLe / pre-0.6.1 Dassl marker
    code, out, _ = run_parser(capsys, exp)
    assert code == 0
    assert summary_line(out) == "* accuracy: 71.00% +- 1.00%"
    # Dassl's print format
    code, out, _ = run_parser(capsys, exp, "--style", "dassl")
    assert "* average accuracy: 71.0% +- 1.0%" in out and out.startswith("===")
    # an evaluation-only log has no end marker: recognised as such, --test-log works as in CoOp
    test = tmp_path / "test_new"
    write_log(test / "seed1", accuracy=60.0, eval_only=True, subsample="new")
    write_log(test / "seed2", accuracy=62.0, eval_only=True, subsample="new")
    for extra in ([], ["--test-log"]):
        code, out, _ = run_parser(capsys, test, *extra)
        assert code == 0 and summary_line(out) == "* accuracy: 61.00% +- 1.00%"


def test_test_log_marker_starts_at_the_first_result_block(tmp_path, capsys):
    """With --test-log a best_val training log reports its final test block (as CoOp's)."""
    write_log(tmp_path / "exp" / "seed1", accuracy=65.0, val_blocks=(40.0, 50.0))
    code, out, _ = run_parser(capsys, tmp_path / "exp", "--test-log")
    assert summary_line(out) == "* accuracy: 65.00% +- 0.00%"


def test_missing_and_unfinished_seeds_are_reported_not_averaged(tmp_path, capsys):
    exp = tmp_path / "exp"
    write_record(exp / "seed1", accuracy=80.0)
    (exp / "seed2").mkdir()  # started, nothing written
    write_log(exp / "seed3", accuracy=None)  # crashed while training
    code, out, _ = run_parser(capsys, exp, "--seeds", "1,2,3,4")
    assert code == 1
    assert summary_line(out) == "* accuracy: 80.00% +- 0.00% (1 of 4 runs; not averaged: seed2, seed3, seed4)"
    assert f"missing: {exp / 'seed2'} (no results.json and no log.txt)" in out
    assert f"unfinished: {exp / 'seed3'} (no '* accuracy:' line after 'Finish training' in log.txt)" in out
    assert f"missing: {exp / 'seed4'} (no such folder)" in out


def test_nothing_found_and_bad_directory(tmp_path, capsys):
    write_log(tmp_path / "exp" / "seed1", accuracy=None)
    code, out, err = run_parser(capsys, tmp_path / "exp")
    assert code == 2 and "nothing found in" in err and "unfinished:" in out
    code, _, err = run_parser(capsys, tmp_path / "nope")
    assert code == 2 and err.startswith("error: ") and "is not a directory" in err
    code, _, err = run_parser(capsys, tmp_path, "--seeds", "one")
    assert code == 2 and "--seeds" in err


def test_rerun_logs_the_newest_counts(tmp_path, capsys):
    run = tmp_path / "exp" / "seed1"
    write_log(run, accuracy=50.0)  # the first run
    write_log(run, "log.txt-2024-01-02-03-04-05", accuracy=55.0)
    write_log(run, "log.txt-2024-01-03-00-00-00", accuracy=60.0)  # the newest re-run
    write_log(run, "log.txt-unfinished-2024-01-09-00-00-00", accuracy=None)  # set aside by our scripts
    assert runs_mod.newest_log(str(run)).endswith("log.txt-2024-01-03-00-00-00")
    code, out, _ = run_parser(capsys, tmp_path / "exp")
    assert code == 0 and summary_line(out).startswith("* accuracy: 60.00%")
    # a newer re-run that did not finish: the seed is unfinished, not the old value
    write_log(run, "log.txt-2024-01-04-00-00-00", accuracy=None)
    code, out, _ = run_parser(capsys, tmp_path / "exp")
    assert code == 2 and "unfinished:" in out


def test_results_json_older_than_the_latest_rerun(tmp_path, capsys):
    run = tmp_path / "exp" / "seed1"
    write_record(run, accuracy=70.0, finished_at="2024-01-01T12:00:00")
    write_log(run, accuracy=70.0)
    write_log(run, "log.txt-2024-01-01-11-00-00", accuracy=None)  # started before results.json: fine
    assert runs_mod.read_run(str(run)).value == 70.0
    write_log(run, "log.txt-2024-01-02-00-00-00", accuracy=None)  # a later run that did not finish
    result = runs_mod.read_run(str(run))
    assert result.status == runs_mod.UNFINISHED and "earlier run" in result.note
    write_log(run, "log.txt-2024-01-02-00-00-00", accuracy=75.0)  # ... or did, without results.json
    result = runs_mod.read_run(str(run))
    assert result.ok and result.value == 75.0 and result.source.endswith("log.txt-2024-01-02-00-00-00")


def test_multi_exp(tmp_path, capsys):
    for exp, values in (("caltech101", (90.0, 92.0)), ("dtd", (50.0, 54.0)), ("eurosat", ())):
        for seed, acc in enumerate(values, 1):
            write_record(tmp_path / exp / f"seed{seed}", accuracy=acc, seed=seed)
    (tmp_path / "eurosat" / "seed1").mkdir(parents=True)
    code, out, _ = run_parser(capsys, tmp_path, "--multi-exp")
    assert code == 1  # eurosat has nothing
    assert "Average performance" in out
    # mean of the experiment means (91 and 52); eurosat is reported and left out
    assert out.strip().splitlines()[-1] == "* accuracy: 71.50% (2 of 3 experiments)"
    assert f"Summary of directory: {tmp_path / 'dtd'}" in out


def test_log_header_gives_the_run_description():
    header = runs_mod.parse_log_header(make_log(trainer="MaPLe", dataset="DescribableTextures", subsample="new",
                                                shots=4, seed=3, eval_only=True, accuracy=10.0,
                                                target_domains="('sketch',)").splitlines())
    info = runs_mod.info_from_header(header)
    assert info["trainer"] == "MaPLe" and info["dataset"] == "DescribableTextures"
    assert info["subsample"] == "new" and info["shots"] == 4 and info["seed"] == 3
    assert info["eval_only"] is True and info["config"] == "vit_b16_ep50" and info["backbone"] == "ViT-B/16"
    assert info["target_domains"] == ["sketch"]
    assert header["cfg"]["DATALOADER.TRAIN_X.BATCH_SIZE"] == "32" and header["cfg"]["TRAINER.COOP.N_CTX"] == "16"


def test_official_folder_layouts_are_understood():
    info = runs_mod.info_from_path("/o/base2new/test_new/oxford_pets/shots_16/CoCoOp/vit_b16_c4/seed2")
    assert info == {"seed": 2, "subsample": "new", "dataset": "OxfordPets", "shots": 16, "trainer": "CoCoOp",
                    "config": "vit_b16_c4"}
    info = runs_mod.info_from_path("/o/evaluation/MaPLe/vit_b16_c2_cross_datasets_16shots/imagenet_a/seed1")
    assert (info["trainer"], info["config"], info["shots"], info["dataset"]) == (
        "MaPLe", "vit_b16_c2_cross_datasets", 16, "ImageNetA")
    info = runs_mod.info_from_path("/o/imagenet/CoOp/vit_b16_16shots/nctx16_cscFalse_ctpend/seed3")
    assert (info["trainer"], info["dataset"], info["seed"]) == ("CoOp", "ImageNet", 3)


def test_value_regex_is_literal_and_last_match_wins():
    lines = ["Finish training", "* accuracy: 10.0%", "* accuracyX: 99.0%", "* accuracy: 1e+01%", "* accuracy: 20.5%"]
    assert runs_mod.value_from_log(lines) == 20.5
    assert runs_mod.value_from_log(["* accuracy: 10.0%"]) is None  # nothing counts before the marker
    assert runs_mod.value_from_log(["Finish training", "* a.c: 3.0%", "* abc: 4.0%"], keyword="a.c") == 3.0
    assert math.isclose(parse_test_res.mean_std([1.0, 3.0])[1], 1.0)  # population std (ddof 0)
