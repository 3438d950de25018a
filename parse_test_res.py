"""Average the results of the seed folders of an experiment (the ``parse_test_res.py`` users know).

    python parse_test_res.py output/base2new/train_base/oxford_pets/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1
    python parse_test_res.py output/base2new/test_new/oxford_pets/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1 --test-log
    python parse_test_res.py output/evaluation/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots --multi-exp

Same flags and the same printed lines as CoOp's ``parse_test_res.py``: per-run
``file: ... accuracy: xx.xx%.`` lines, then ``* accuracy: mean% +- std%`` (population std,
``--ci95`` for 1.96 std / sqrt(n)); ``--multi-exp`` parses each entry of DIR as an
experiment and ends with ``Average performance``.  ``--style dassl`` prints Dassl's format.

Deliberate differences (each a fix of the official parsers):

* a run's ``results.json`` is read when present (full precision, no log grepping);
  otherwise the newest of ``log.txt`` / ``log.txt-<timestamp>`` (a re-run's log), not
  always the first run's ``log.txt``;
* missing and unfinished runs are listed and never averaged: the summary line says how
  many runs it covers, and the exit status is 1 (0 when every run is complete);
  ``--seeds 1,2,3`` also reports seed folders that do not exist at all;
* evaluation-only logs are recognised without ``--test-log``; both ``Finish training`` and
  MaPLe's ``Finished training`` end markers are accepted; files in DIR are ignored
  instead of failing; ``--keyword`` is matched literally.
"""
from __future__ import annotations

import argparse
import math
import os
import os.path as osp
import sys
from typing import List, Optional

from gopro_prompts.results.runs import MISSING, Run, is_run_dir, read_run


def mean_std(values: List[float], ci95: bool = False):
    """Mean and population std (ddof 0) of ``values``; with ``ci95`` 1.96 * std / sqrt(n)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    if ci95:
        std = 1.96 * std / math.sqrt(n)
    return mean, std


def run_dirs_of(directory: str) -> List[str]:
    """The run folders of one experiment: its non-hidden sub-folders, sorted (or DIR itself if it is a run)."""
    if is_run_dir(directory):
        return [directory]
    return sorted(osp.join(directory, e) for e in os.listdir(directory)
                  if not e.startswith(".") and osp.isdir(osp.join(directory, e)))


def parse_experiment(directory: str, keyword: str = "accuracy", test_log: Optional[bool] = None,
                     seeds: Optional[List[int]] = None) -> List[Run]:
    """Every run of ``directory`` (its seed folders), plus missing ``seed<N>`` folders for ``seeds``."""
    runs = [read_run(d, keyword, test_log) for d in run_dirs_of(directory)]
    for seed in seeds or ():
        path = osp.join(directory, f"seed{seed}")
        if not osp.isdir(path):
            runs.append(Run(osp.normpath(path), MISSING, info={"seed": seed}, note="no such folder"))
    return runs


def _fmt(value: float, style: str) -> str:
    return f"{value:.1f}" if style == "dassl" else f"{value:.2f}"


def print_experiment(directory: str, runs: List[Run], keyword: str, ci95: bool, style: str):
    """Print one experiment; returns its mean (None when no run has a value)."""
    done = [r for r in runs if r.ok]
    incomplete = [r for r in runs if not r.ok]
    if style == "dassl":
        print("===")
    print(f"Parsing files in {directory}")
    for run in done:
        print(f"file: {run.source}. {keyword}: {_fmt(run.value, style)}%. ")
    for run in incomplete:  # reported, never averaged
        print(f"{run.status}: {run.path}" + (f" ({run.note})" if run.note else ""))
    if not done:
        if style != "dassl":
            print("===")
        print(f"Nothing found in {directory}" + (f" ({len(incomplete)} run(s) missing or unfinished)"
                                                  if incomplete else ""))
        print("===")
        return None
    mean, std = mean_std([r.value for r in done], ci95)
    coverage = ""
    if incomplete:
        names = ", ".join(osp.basename(r.path) for r in incomplete)
        coverage = f" ({len(done)} of {len(runs)} runs; not averaged: {names})"
    if style == "dassl":
        print(f"* average {keyword}: {_fmt(mean, style)}% +- {_fmt(std, style)}%{coverage}")
    else:
        print("===")
        print(f"Summary of directory: {directory}")
        print(f"* {keyword}: {_fmt(mean, style)}% +- {_fmt(std, style)}%{coverage}")
    print("===")
    return mean


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=str, help="experiment folder (its entries are the seed folders)")
    parser.add_argument("--ci95", action="store_true", help="report the 95%% confidence interval instead of std")
    parser.add_argument("--test-log", action="store_true",
                        help="read logs from the first '=> result' line (evaluation-only logs; recognised anyway)")
    parser.add_argument("--multi-exp", action="store_true", help="DIR holds several experiments")
    parser.add_argument("--keyword", default="accuracy", type=str, help="which metric: accuracy, error, macro_f1")
    parser.add_argument("--seeds", type=str, default="",
                        help="expected seeds, e.g. 1,2,3: a missing seed<N> folder is reported")
    parser.add_argument("--style", choices=("coop", "dassl"), default="coop", help="print format")
    return parser


def _parse_seeds(text: str) -> List[int]:
    try:
        return [int(s) for s in text.replace(" ", ",").split(",") if s]
    except ValueError:
        raise ValueError(f"--seeds {text!r} is not a list of integers: write e.g. --seeds 1,2,3") from None


def main(argv=None) -> int:
    """Returns 0 when every run is complete, 1 when some are missing or unfinished, 2 on bad input."""
    args = get_parser().parse_args(argv)
    try:
        seeds = _parse_seeds(args.seeds)
        if not osp.isdir(args.directory):
            raise FileNotFoundError(f"{args.directory} is not a directory: give the folder holding the seed folders")
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    test_log = True if args.test_log else None
    if args.multi_exp:
        experiments = sorted(osp.join(args.directory, e) for e in os.listdir(args.directory)
                             if not e.startswith(".") and osp.isdir(osp.join(args.directory, e)))
    else:
        experiments = [args.directory]

    means, complete, found = [], True, False
    for exp in experiments:
        runs = parse_experiment(exp, args.keyword, test_log, seeds)
        mean = print_experiment(exp, runs, args.keyword, args.ci95, args.style)
        complete = complete and bool(runs) and all(r.ok for r in runs)
        if mean is not None:
            found = True
            means.append(mean)
        if args.multi_exp:
            print()
    if args.multi_exp and means:
        print("Average performance")
        note = "" if len(means) == len(experiments) else f" ({len(means)} of {len(experiments)} experiments)"
        print(f"* {args.keyword}: {_fmt(sum(means) / len(means), args.style)}%{note}")
    if not found:
        sys.stderr.write(
            f"error: nothing found in {args.directory}: no results.json and no log with a "
            f"'* {args.keyword}:' line after 'Finish training' (or '=> result' for evaluation logs)\n")
        return 2
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
