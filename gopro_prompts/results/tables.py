"""Comparison tables of the three protocols, from output trees.

    python -m gopro_prompts.results.tables base2new output/base2new [--datasets oxford_pets,dtd] [--trainers CoOp,MaPLe]
    python -m gopro_prompts.results.tables xd output/imagenet output/evaluation --source imagenet
    python -m gopro_prompts.results.tables dg output/imagenet output/evaluation
    ... [--seeds 1,2,3] [--shots 16] [--format table|markdown|csv|json] [--save PREFIX] [--chart FILE.png]

* **base2new**: per method and dataset the mean over seeds of the base accuracy (runs with
  ``SUBSAMPLE_CLASSES base``), the new accuracy (``new``) and the harmonic mean of the two
  means; then per method the average over datasets: mean base, mean new and the HM of those
  means (the convention of the CoCoOp / MaPLe / GOPro tables).
* **xd** (cross-dataset) and **dg** (domain generalisation): per method the source
  dataset, each target and the average over the targets.  ``dg`` defaults to ImageNet's four
  variants (or SyntheticObjects' style variants) as targets, ``xd`` to every other evaluated
  dataset; ``--datasets`` names the targets explicitly.

Runs are found by walking the roots and read with :mod:`gopro_prompts.results.runs` (results.json, else the
newest log); they are grouped by what each run says it is (trainer, config, dataset,
subsample, shots, seed, backbone), not by folder names.  A seed that is expected (``--seeds``,
else every seed seen in the table) but missing or unfinished is listed under the table and its
cell is marked with ``†``; it is never averaged in silently.

Output: a terminal table (tabulate), Markdown, CSV, JSON and a PNG bar chart (matplotlib).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os.path as osp
import sys
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from gopro_prompts.results.published import B2N_DATASETS, DG_TARGETS
from gopro_prompts.results.runs import Run, canonical_dataset, collect

#: display order of the trainers (others follow alphabetically)
METHOD_ORDER = ("ZeroshotCLIP", "ZeroshotCLIP2", "CoOp", "CoCoOp", "KgCoOp", "ProGrad", "VPT", "IVLP", "MaPLe",
                "PromptSRC", "GOPro")
#: the synthetic benchmark (datasets/synthetic_benchmarks.py): SyntheticObjects is the base-to-new
#: dataset and the source; SyntheticPatterns a cross-dataset target; the style variants are its DG targets
SYNTHETIC_DATASETS = ("SyntheticObjects", "SyntheticPatterns", "SyntheticShapes")
SYNTHETIC_DG_TARGETS = ("SyntheticObjectsSketch", "SyntheticObjectsCartoon", "SyntheticObjectsPainting")
#: datasets that are domain-generalisation targets (left out of the cross-dataset table by default)
DG_DATASETS = DG_TARGETS + SYNTHETIC_DG_TARGETS
#: display order of the datasets (others follow alphabetically)
DATASET_ORDER = B2N_DATASETS + DG_TARGETS + SYNTHETIC_DATASETS + SYNTHETIC_DG_TARGETS
MARK = "†"
PROTOCOLS = ("base2new", "xd", "dg")


def harmonic_mean(base: Optional[float], new: Optional[float]) -> Optional[float]:
    """HM = 2·base·new / (base + new); None when either is missing."""
    if base is None or new is None:
        return None
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def is_zero_shot(trainer: str) -> bool:
    """Zero-shot CLIP trains nothing: its result does not depend on the seed."""
    return str(trainer).startswith("ZeroshotCLIP")


# ------------------------------------------------------------------------------------------ cells
@dataclass
class Cell:
    """The runs of one method on one column (dataset, split): a mean over seeds."""

    values: Dict[int, float] = field(default_factory=dict)
    #: "seed2: unfinished (...)" lines; a non-empty list marks the cell incomplete
    problems: List[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> Optional[float]:
        return mean(list(self.values.values()))

    @property
    def std(self) -> Optional[float]:
        """Population std over seeds (ddof 0, as parse_test_res.py)."""
        m = self.mean
        if m is None:
            return None
        return math.sqrt(sum((v - m) ** 2 for v in self.values.values()) / self.n)

    @property
    def complete(self) -> bool:
        return bool(self.values) and not self.problems

    def to_dict(self) -> Dict:
        return {"mean": self.mean, "std": self.std, "n": self.n,
                "values": {str(k): v for k, v in sorted(self.values.items())},
                "complete": self.complete, "problems": list(self.problems)}


def _seed_name(seed) -> str:
    return f"seed{seed}" if seed is not None else "run"


def build_cell(runs: List[Run], expected_seeds: Optional[Iterable[int]]) -> Cell:
    """One cell from the runs of a (method, column); ``expected_seeds`` None: any seed will do."""
    cell = Cell()
    by_seed: Dict[Optional[int], List[Run]] = {}
    for run in runs:
        by_seed.setdefault(run.info.get("seed"), []).append(run)
    for seed, group in sorted(by_seed.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        # the same seed twice (e.g. a training run and a re-evaluation): a finished run wins,
        # and among those the training run's own test
        group.sort(key=lambda r: (not r.ok, bool(r.info.get("eval_only"))))
        best = group[0]
        if best.ok:
            cell.values[seed if seed is not None else -1] = best.value
        else:
            cell.problems.append(f"{_seed_name(seed)} {best.status}: {best.path}"
                                 + (f" ({best.note})" if best.note else ""))
    for seed in expected_seeds or ():
        if seed not in by_seed:
            cell.problems.append(f"seed{seed} missing: no run found")
    return cell


# ---------------------------------------------------------------------------------- grouping
MethodKey = Tuple[str, str, Optional[int], str]


def method_key(info: Dict) -> MethodKey:
    """(trainer, config, shots, backbone); zero-shot CLIP ignores the config's shots."""
    trainer = info.get("trainer") or "?"
    shots = None if is_zero_shot(trainer) else info.get("shots")
    return (trainer, info.get("config") or "", shots, str(info.get("backbone") or ""))


def assign_method_keys(runs: List[Run]) -> Dict[int, MethodKey]:
    """``id(run)`` -> its method key.

    A run known only from its folder path (an empty or crashed seed folder) lacks some fields
    (e.g. the backbone); it joins the one fully described method it is compatible with, so that
    it is reported as that method's missing seed instead of a separate phantom method.
    """
    full = {method_key(r.info) for r in runs if _fully_described(r.info)}
    keys = {}
    for run in runs:
        key = method_key(run.info)
        if not _fully_described(run.info):
            matches = [k for k in full if k[0] == key[0] and all(
                mine in (None, "") or mine == theirs for mine, theirs in zip(key[1:], k[1:]))]
            if len(matches) == 1:
                key = matches[0]
        keys[id(run)] = key
    return keys


def _fully_described(info: Dict) -> bool:
    return all(info.get(k) not in (None, "") for k in ("trainer", "backbone")) and "shots" in info


def method_labels(keys: Iterable[MethodKey]) -> Dict[MethodKey, str]:
    """Display names: the trainer, plus whatever tells its variants apart (config, shots, backbone)."""
    keys = sorted(set(keys), key=_method_sort)
    labels = {}
    for key in keys:
        siblings = [k for k in keys if k[0] == key[0]]
        extra = []
        for i, fmt in ((1, "{}"), (2, "{}-shot"), (3, "{}")):
            if len({k[i] for k in siblings}) > 1 and key[i] not in (None, ""):
                extra.append(fmt.format(key[i]))
        labels[key] = key[0] + (f" ({', '.join(extra)})" if extra else "")
    return labels


def _method_sort(key: MethodKey):
    trainer = key[0]
    rank = METHOD_ORDER.index(trainer) if trainer in METHOD_ORDER else len(METHOD_ORDER)
    return (rank, trainer, key[1], key[2] or 0, key[3])


def _dataset_sort(name: str):
    base = name.split("[")[0]
    rank = DATASET_ORDER.index(base) if base in DATASET_ORDER else len(DATASET_ORDER)
    return (rank, name)


def column_of(info: Dict) -> str:
    """A table column: the dataset, with its target domains when it has some (``SyntheticShapes[sketch]``)."""
    name = info.get("dataset") or "?"
    domains = info.get("target_domains") or []
    return f"{name}[{','.join(domains)}]" if domains else name


def _names(values: Optional[Iterable[str]], canonical=lambda x: x) -> Optional[List[str]]:
    if values is None:
        return None
    return [canonical(v) for v in values]


def _select(runs: List[Run], trainers: Optional[List[str]], shots: Optional[int],
            unattributed: List[str]) -> List[Run]:
    selected = []
    for run in runs:
        trainer = run.info.get("trainer")
        if not trainer or not run.info.get("dataset"):
            unattributed.append(run.describe())
            continue
        if trainers is not None and trainer not in trainers:
            continue
        if shots is not None and not is_zero_shot(trainer) and run.info.get("shots") != shots:
            continue
        selected.append(run)
    return selected


def _expected_seeds(seeds, runs: List[Run]) -> List[int]:
    if seeds is not None:
        return list(seeds)
    return sorted({r.info["seed"] for r in runs
                   if not is_zero_shot(r.info.get("trainer", "")) and r.info.get("seed") is not None})


# --------------------------------------------------------------------------------------- tables
@dataclass
class Table:
    """A protocol's table; ``to_dict()`` is its JSON form."""

    protocol: str
    keyword: str
    methods: List[str]
    seeds: List[int]
    datasets: List[str] = field(default_factory=list)  # base2new
    source: str = ""  # xd / dg
    targets: List[str] = field(default_factory=list)  # xd / dg
    rows: List[Dict] = field(default_factory=list)
    average: List[Dict] = field(default_factory=list)  # base2new
    problems: List[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.problems

    def to_dict(self) -> Dict:
        def convert(obj):
            if isinstance(obj, Cell):
                return obj.to_dict()
            if isinstance(obj, dict):
                return {k: convert(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [convert(v) for v in obj]
            return obj

        data = {"protocol": self.protocol, "keyword": self.keyword, "methods": self.methods, "seeds": self.seeds}
        if self.protocol == "base2new":
            data["datasets"] = self.datasets
        else:
            data.update(source=self.source, targets=self.targets)
        data.update(rows=convert(self.rows), complete=self.complete, problems=self.problems)
        if self.protocol == "base2new":
            data["average"] = convert(self.average)
        return data


def base2new_table(runs: List[Run], *, datasets: Optional[Sequence[str]] = None,
                   trainers: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None,
                   shots: Optional[int] = None, keyword: str = "accuracy") -> Table:
    """Base / new / HM per method and dataset, and the average over datasets per method."""
    problems: List[str] = []
    trainers = _names(trainers)
    runs = [r for r in _select(runs, trainers, shots, problems) if r.info.get("subsample") in ("base", "new")]
    wanted = _names(datasets, canonical_dataset)
    if wanted is not None:
        runs = [r for r in runs if column_of(r.info) in wanted]
    expected = _expected_seeds(seeds, runs)
    run_keys = assign_method_keys(runs)
    groups: Dict[Tuple[MethodKey, str, str], List[Run]] = {}
    for run in runs:
        groups.setdefault((run_keys[id(run)], column_of(run.info), run.info["subsample"]), []).append(run)
    keys = sorted({g[0] for g in groups} | {(t, "", None, "") for t in (trainers or ())
                                             if not any(g[0][0] == t for g in groups)}, key=_method_sort)
    labels = method_labels(keys)
    columns = list(wanted) if wanted is not None else sorted({g[1] for g in groups}, key=_dataset_sort)

    table = Table("base2new", keyword, [labels[k] for k in keys], expected, datasets=columns)
    per_method: Dict[MethodKey, List[Tuple[Optional[float], Optional[float], bool]]] = {k: [] for k in keys}
    for dataset in columns:
        for key in keys:
            want = None if is_zero_shot(key[0]) else expected
            cells = {}
            for split in ("base", "new"):
                cell = build_cell(groups.get((key, dataset, split), []), want)
                if not cell.values and not cell.problems:
                    cell.problems.append("no run found")
                cells[split] = cell
                problems.extend(f"{labels[key]} / {dataset} / {split}: {p}" for p in cell.problems)
            hm = harmonic_mean(cells["base"].mean, cells["new"].mean)
            complete = cells["base"].complete and cells["new"].complete
            table.rows.append({"dataset": dataset, "method": labels[key], "base": cells["base"],
                               "new": cells["new"], "hm": hm, "complete": complete})
            per_method[key].append((cells["base"].mean, cells["new"].mean, complete))
    for key in keys:
        usable = [(b, n, c) for b, n, c in per_method[key] if b is not None and n is not None]
        avg_base = mean([b for b, _, _ in usable])
        avg_new = mean([n for _, n, _ in usable])
        table.average.append({
            "method": labels[key], "base": avg_base, "new": avg_new, "hm": harmonic_mean(avg_base, avg_new),
            "n_datasets": len(usable), "of": len(columns),
            "complete": len(usable) == len(columns) and all(c for _, _, c in usable),
        })
    table.problems = problems
    return table


def transfer_table(runs: List[Run], protocol: str = "xd", *, source: Optional[str] = None,
                   targets: Optional[Sequence[str]] = None, trainers: Optional[Sequence[str]] = None,
                   seeds: Optional[Sequence[int]] = None, shots: Optional[int] = None,
                   keyword: str = "accuracy") -> Table:
    """Cross-dataset (``xd``) or domain-generalisation (``dg``) table: source, each target, average of targets."""
    if protocol not in ("xd", "dg"):
        raise ValueError(f"protocol {protocol!r} is not a transfer protocol: use xd or dg")
    problems: List[str] = []
    trainers = _names(trainers)
    runs = [r for r in _select(runs, trainers, shots, problems)
            if r.info.get("subsample", "all") == "all"]
    present = sorted({column_of(r.info) for r in runs}, key=_dataset_sort)
    source = canonical_dataset(source) if source else _guess_source(runs, present)
    if targets is not None:
        target_cols = [canonical_dataset(t) for t in targets if canonical_dataset(t) != source]
    elif protocol == "dg":
        target_cols = [c for c in present if c.split("[")[0] in DG_DATASETS] or [c for c in present if c != source]
    else:
        target_cols = [c for c in present if c != source and c.split("[")[0] not in DG_DATASETS]
    columns = ([source] if source else []) + target_cols
    runs = [r for r in runs if column_of(r.info) in columns]
    expected = _expected_seeds(seeds, runs)
    run_keys = assign_method_keys(runs)
    groups: Dict[Tuple[MethodKey, str], List[Run]] = {}
    for run in runs:
        groups.setdefault((run_keys[id(run)], column_of(run.info)), []).append(run)
    keys = sorted({g[0] for g in groups} | {(t, "", None, "") for t in (trainers or ())
                                             if not any(g[0][0] == t for g in groups)}, key=_method_sort)
    labels = method_labels(keys)
    table = Table(protocol, keyword, [labels[k] for k in keys], expected, source=source, targets=target_cols)
    for key in keys:
        want = None if is_zero_shot(key[0]) else expected
        cells = {}
        for col in columns:
            cell = build_cell(groups.get((key, col), []), want)
            if not cell.values and not cell.problems:
                cell.problems.append("no run found")
            cells[col] = cell
            problems.extend(f"{labels[key]} / {col}: {p}" for p in cell.problems)
        target_means = [cells[c].mean for c in target_cols if cells[c].mean is not None]
        table.rows.append({
            "method": labels[key], "cells": cells, "average": mean(target_means),
            "n_targets": len(target_means), "of": len(target_cols),
            "complete": all(cells[c].complete for c in columns),
        })
    table.problems = problems
    return table


def _guess_source(runs: List[Run], present: List[str]) -> str:
    """ImageNet (or SyntheticObjects) if evaluated, else the dataset most training runs were made on."""
    for name in ("ImageNet", "SyntheticObjects"):
        if name in present:
            return name
    counts: Dict[str, int] = {}
    for run in runs:
        if not run.info.get("eval_only") and not is_zero_shot(run.info.get("trainer", "")):
            counts[column_of(run.info)] = counts.get(column_of(run.info), 0) + 1
    if counts:
        return max(sorted(counts), key=counts.get)
    return present[0] if present else ""


# ------------------------------------------------------------------------------------ rendering
def _num(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2f}"


def _cell_text(cell: Cell) -> str:
    if cell.mean is None:
        return f"– {MARK}"
    text = _num(cell.mean) + (f" ± {cell.std:.2f}" if cell.n > 1 else "")
    return text + ("" if cell.complete else f" {MARK}")


def rows_for_display(table: Table) -> Tuple[List[str], List[List[str]]]:
    """Header and rows of the table as strings (shared by the terminal and Markdown forms)."""
    if table.protocol == "base2new":
        header = ["Dataset", "Method", "Base", "New", "HM"]
        rows = [[r["dataset"], r["method"], _cell_text(r["base"]), _cell_text(r["new"]),
                 _num(r["hm"]) + ("" if r["complete"] else f" {MARK}")] for r in table.rows]
        n = len(table.datasets)
        for a in table.average:
            flag = "" if a["complete"] else f" {MARK}"
            name = f"Average ({n})" if a["n_datasets"] == n else f"Average ({a['n_datasets']} of {n})"
            rows.append([name, a["method"], _num(a["base"]) + flag, _num(a["new"]) + flag, _num(a["hm"]) + flag])
        return header, rows
    columns = [table.source] + table.targets if table.source else list(table.targets)
    header = ["Method"] + [f"{c} (source)" if c == table.source else c for c in columns] + ["Average (targets)"]
    rows = []
    for r in table.rows:
        avg = _num(r["average"])
        if r["n_targets"] != r["of"]:
            avg += f" ({r['n_targets']} of {r['of']})"
        if not r["complete"]:
            avg += f" {MARK}"
        rows.append([r["method"]] + [_cell_text(r["cells"][c]) for c in columns] + [avg])
    return header, rows


def _title(table: Table) -> str:
    seeds = ",".join(str(s) for s in table.seeds) or "–"
    names = {"base2new": "Base-to-new generalisation", "xd": "Cross-dataset transfer",
             "dg": "Domain generalisation"}
    return f"{names[table.protocol]} ({table.keyword}, mean over seeds {seeds})"


def _footnotes(table: Table) -> List[str]:
    if not table.problems:
        return []
    return [f"{MARK} incomplete (never averaged in): {len(table.problems)} problem(s)"] + \
        [f"  - {p}" for p in table.problems]


def render_terminal(table: Table) -> str:
    from tabulate import tabulate

    header, rows = rows_for_display(table)
    body = tabulate(rows, headers=header, tablefmt="simple", disable_numparse=True)
    return "\n".join([_title(table), body, *_footnotes(table)]) + "\n"


def render_markdown(table: Table) -> str:
    from tabulate import tabulate

    header, rows = rows_for_display(table)
    body = tabulate(rows, headers=header, tablefmt="github", disable_numparse=True)
    notes = _footnotes(table)
    return "\n".join([f"**{_title(table)}**", "", body] + ([""] + notes if notes else [])) + "\n"


def render_csv(table: Table) -> str:
    """One line per cell group, numbers unrounded (mean, std, number of seeds per split)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if table.protocol == "base2new":
        writer.writerow(["dataset", "method", "base", "base_std", "base_n", "new", "new_std", "new_n", "hm",
                         "complete"])
        for r in table.rows:
            writer.writerow([r["dataset"], r["method"], *_csv_cell(r["base"]), *_csv_cell(r["new"]),
                             _csv_num(r["hm"]), r["complete"]])
        for a in table.average:
            writer.writerow([f"Average ({a['n_datasets']} of {a['of']})", a["method"], _csv_num(a["base"]), "",
                             "", _csv_num(a["new"]), "", "", _csv_num(a["hm"]), a["complete"]])
        return out.getvalue()
    columns = [table.source] + table.targets if table.source else list(table.targets)
    header = ["method"]
    for c in columns:
        header += [c, f"{c}_std", f"{c}_n"]
    writer.writerow(header + ["average_targets", "n_targets", "complete"])
    for r in table.rows:
        cells = []
        for c in columns:
            cells += _csv_cell(r["cells"][c])
        writer.writerow([r["method"], *cells, _csv_num(r["average"]), r["n_targets"], r["complete"]])
    return out.getvalue()


def _csv_num(value):
    return "" if value is None else repr(round(value, 6))


def _csv_cell(cell: Cell):
    return [_csv_num(cell.mean), _csv_num(cell.std), cell.n]


def render_json(table: Table) -> str:
    return json.dumps(table.to_dict(), indent=2) + "\n"


def plot_chart(table: Table, path: str) -> str:
    """A grouped bar chart per method: base / new / HM (average over datasets), or each column for xd / dg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if table.protocol == "base2new":
        series = {"Base": [a["base"] for a in table.average], "New": [a["new"] for a in table.average],
                  "HM": [a["hm"] for a in table.average]}
        methods = [a["method"] for a in table.average]
        ylabel = f"{table.keyword} (%), average over {len(table.datasets)} dataset(s)"
    else:
        methods = [r["method"] for r in table.rows]
        columns = [table.source] + table.targets if table.source else list(table.targets)
        series = {c: [r["cells"][c].mean for r in table.rows] for c in columns}
        series["Average (targets)"] = [r["average"] for r in table.rows]
        ylabel = f"{table.keyword} (%)"
    n_series = max(len(series), 1)
    width = 0.8 / n_series
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(methods) * max(1, n_series / 3)), 4.5))
    for i, (name, values) in enumerate(series.items()):
        xs = [m + (i - (n_series - 1) / 2) * width for m in range(len(methods))]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, heights, width, label=name)
        for bar, value in zip(bars, values):
            ax.annotate("–" if value is None else f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=15 if len(methods) > 4 else 0)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.set_title(_title(table) + ("" if table.complete else f"  [{MARK} incomplete]"), fontsize=9)
    ax.legend(fontsize=8, ncol=min(n_series, 4))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


RENDERERS = {"table": render_terminal, "markdown": render_markdown, "csv": render_csv, "json": render_json}
SUFFIXES = {"markdown": ".md", "csv": ".csv", "json": ".json"}


def save_all(table: Table, prefix: str) -> List[str]:
    """Write PREFIX.md, PREFIX.csv, PREFIX.json, PREFIX.txt and PREFIX.png; returns the paths."""
    import os

    os.makedirs(osp.dirname(osp.abspath(prefix)), exist_ok=True)
    paths = []
    for fmt, suffix in SUFFIXES.items():
        with open(prefix + suffix, "w") as f:
            f.write(RENDERERS[fmt](table))
        paths.append(prefix + suffix)
    with open(prefix + ".txt", "w") as f:
        f.write(render_terminal(table))
    paths.append(prefix + ".txt")
    paths.append(plot_chart(table, prefix + ".png"))
    return paths


def build_table(protocol: str, runs: List[Run], **kwargs) -> Table:
    if protocol == "base2new":
        kwargs.pop("source", None)
        targets = kwargs.pop("targets", None)
        if targets is not None and kwargs.get("datasets") is None:
            kwargs["datasets"] = targets
        return base2new_table(runs, **kwargs)
    if protocol in ("xd", "dg"):
        datasets = kwargs.pop("datasets", None)
        if datasets is not None and kwargs.get("targets") is None:
            kwargs["targets"] = datasets
        return transfer_table(runs, protocol, **kwargs)
    raise ValueError(f"unknown protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")


# ------------------------------------------------------------------------------------------ CLI
def _list(text: Optional[str]) -> Optional[List[str]]:
    if text is None:
        return None
    return [t for t in text.replace(" ", ",").split(",") if t]


def _int_list(text: Optional[str]) -> Optional[List[int]]:
    items = _list(text)
    if items is None:
        return None
    try:
        return [int(t) for t in items]
    except ValueError:
        raise ValueError(f"--seeds {text!r} is not a list of integers: write e.g. --seeds 1,2,3") from None


def get_parser():
    parser = argparse.ArgumentParser(prog="python -m gopro_prompts.results.tables", description=__doc__.split("\n")[0])
    parser.add_argument("protocol", choices=PROTOCOLS)
    parser.add_argument("roots", nargs="+", help="output folders to search for runs (e.g. output/base2new)")
    parser.add_argument("--datasets", help="comma-separated datasets (config names like oxford_pets or "
                                           "DATASET.NAMEs); for xd / dg the targets")
    parser.add_argument("--trainers", help="comma-separated trainers to show (default: every trainer found)")
    parser.add_argument("--seeds", help="expected seeds, e.g. 1,2,3 (default: every seed found)")
    parser.add_argument("--shots", type=int, help="only runs with this DATASET.NUM_SHOTS")
    parser.add_argument("--source", help="xd / dg: the source dataset (default ImageNet, else guessed)")
    parser.add_argument("--keyword", default="accuracy", help="metric: accuracy, error or macro_f1")
    parser.add_argument("--format", choices=tuple(RENDERERS), default="table", help="what to print")
    parser.add_argument("--save", metavar="PREFIX", help="also write PREFIX.{txt,md,csv,json,png}")
    parser.add_argument("--chart", metavar="FILE", help="write the bar chart to FILE (PNG)")
    return parser


def main(argv=None) -> int:
    """Print the table; 0 when complete, 1 when some run is missing or unfinished, 2 on bad input."""
    args = get_parser().parse_args(argv)
    try:
        runs = collect(args.roots, keyword=args.keyword)
        table = build_table(args.protocol, runs, datasets=_list(args.datasets), trainers=_list(args.trainers),
                            seeds=_int_list(args.seeds), shots=args.shots, source=args.source,
                            keyword=args.keyword)
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if not table.rows:
        sys.stderr.write(f"error: no {args.protocol} runs found under {', '.join(args.roots)} "
                         "(check the folders and the --datasets / --trainers / --shots filters)\n")
        return 2
    sys.stdout.write(RENDERERS[args.format](table))
    if args.save:
        for path in save_all(table, args.save):
            sys.stderr.write(f"Saved {path}\n")
    if args.chart:
        sys.stderr.write(f"Saved {plot_chart(table, args.chart)}\n")
    return 0 if table.complete else 1


if __name__ == "__main__":
    sys.exit(main())
