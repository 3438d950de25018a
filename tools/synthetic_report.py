"""Write the synthetic benchmark's report: docs/synthetic_results.md and the README section.

    python -m gopro_prompts.tools.synthetic_report COMPARE_DIR --minutes 21 --seeds 1,2,3 --epochs 4 --cores 2 --jobs 2

``COMPARE_DIR`` holds the tables that ``scripts/compare.sh`` saved
(``base2new.md``, ``xd.md``, ``dg.md``).  The report is written to
``--results`` (default ``docs/synthetic_results.md``) and, with its headings
moved two levels down, between the README's markers::

    <!-- BEGIN synthetic results: written by scripts/synthetic_benchmark.sh -->
    <!-- END synthetic results -->

so the README's table always comes from a run of the committed script.
``scripts/synthetic_benchmark.sh`` calls this at the end of a run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDECAR = os.path.join(REPO, "assets", "tiny_clip_synthetic.json")
BEGIN = "<!-- BEGIN synthetic results: written by scripts/synthetic_benchmark.sh -->"
END = "<!-- END synthetic results -->"

SECTIONS = [
    ("base2new", "Base-to-new generalisation (SyntheticObjects)",
     "Trained on the 32 base classes (16 shots), tested on the base classes and on the 32 new classes "
     "(colour-shape combinations the prompts never saw; every colour and shape word is in both halves). "
     "HM: harmonic mean of base and new."),
    ("xd", "Cross-dataset transfer (SyntheticObjects -> SyntheticPatterns)",
     "Trained on all 64 SyntheticObjects classes (16 shots), tested on SyntheticPatterns: 32 "
     "\"<colour> <texture> pattern\" classes, another concept family (the analogue of DTD)."),
    ("dg", "Domain generalisation (photo -> sketch / cartoon / painting)",
     "The same SyntheticObjects models, tested on the same 64 classes drawn in styles they were not "
     "trained on (the analogue of ImageNet-Sketch / -R)."),
]


class ReportError(Exception):
    """A report that cannot be written (the message says why and what to do)."""


def render(compare_dir: str, minutes: int, seeds: str, epochs: int, cores: int, jobs: int,
           sidecar: str = SIDECAR, resumed: bool = False) -> str:
    """The report as markdown (a level-1 title, a level-2 heading per protocol)."""
    parallel = f", {jobs} runs at a time" if jobs > 1 else ""
    if resumed:
        parallel += "; it resumed an earlier run, whose finished runs it skipped, so this is not the whole time"
    out = [
        "# Synthetic benchmark results",
        "",
        "**Synthetic data, tiny model: these numbers show that the methods learn and generalise in this "
        "repository's offline proving ground; they say nothing about the published ViT-B/16 numbers.**",
        "",
        "Model: the built-in `tiny-synthetic` CLIP (3-layer ViT on 32x32 images, 3-layer text transformer, "
        "64-d embeddings, the real CLIP BPE tokenizer), pretrained contrastively by "
        "`tools/pretrain_tiny_clip.py` on procedurally generated captioned images: colour x shape x texture "
        "objects and texture swatches in four styles (photo, sketch, cartoon, painting). The benchmark "
        "images come from the same concept world seen through a *downstream camera* the pretraining never "
        "saw (lower contrast, warm cast), as real downstream datasets differ from CLIP's web images.",
        "",
        f"Protocols as in CoOp / CoCoOp / MaPLe, through `scripts/compare.sh` with each method's official "
        f"config and a common short schedule for the tiny model ({epochs} epochs, the first a warm-up; "
        f"batch 8; 16 shots); seeds {seeds}; mean (and std over seeds) of the test accuracy (%). "
        f"Regenerate: `bash scripts/synthetic_benchmark.sh` (this run: {minutes} min on {cores} CPU cores"
        f"{parallel}).",
        "",
    ]
    if os.path.isfile(sidecar):
        with open(sidecar) as f:
            zs = json.load(f).get("zero_shot", {})
        if zs:
            out += [
                "Zero-shot accuracy of the checkpoint on freshly rendered images "
                "(`assets/tiny_clip_synthetic.json`): "
                f"base {zs.get('objects_base_photo')}%, new {zs.get('objects_new_photo')}% "
                f"(chance {zs.get('chance_objects_half')}%); on the pretraining distribution (no camera) "
                f"base {zs.get('pretraining_objects_base_photo')}%, new {zs.get('pretraining_objects_new_photo')}%.",
                "",
            ]
    for key, title, text in SECTIONS:
        out += [f"## {title}", "", text, ""]
        path = os.path.join(compare_dir, key + ".md")
        if os.path.isfile(path):
            with open(path) as f:
                out.append(f.read().strip())
        else:
            out.append(f"(no table: {path} was not written; see the run logs)")
        out.append("")
    return "\n".join(out)


def readme_section(report: str) -> str:
    """The report without its title, every heading two levels down (it sits under a README ``###``)."""
    lines = report.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    body = "\n".join("##" + line if re.match(r"#+ ", line) else line for line in lines)
    return body.strip("\n")


def splice(readme: str, section: str, readme_path: str = "README.md") -> str:
    """``readme`` with the text between the markers replaced by ``section``."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ReportError(f"{readme_path} does not have the two markers {BEGIN!r} and {END!r} (once each, "
                          f"in this order): put them back around its synthetic results section")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{section}\n{END}{tail}"


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("compare_dir", help="the folder of compare.sh's tables (base2new.md, xd.md, dg.md)")
    parser.add_argument("--results", default=os.path.join(REPO, "docs", "synthetic_results.md"))
    parser.add_argument("--readme", default=os.path.join(REPO, "README.md"),
                        help="README to update between its markers ('' = none)")
    parser.add_argument("--minutes", type=int, required=True)
    parser.add_argument("--seeds", required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--cores", type=int, required=True)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--resumed", action="store_true", help="the run skipped runs finished before it")
    args = parser.parse_args(argv)
    report = render(args.compare_dir, args.minutes, args.seeds, args.epochs, args.cores, args.jobs,
                    resumed=args.resumed)
    try:
        if args.readme:
            with open(args.readme) as f:
                readme = splice(f.read(), readme_section(report), args.readme)
    except (OSError, ReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _write(args.results, report + "\n")
    print(f"Wrote {args.results}")
    if args.readme:
        _write(args.readme, readme)
        print(f"Updated the synthetic results section of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
