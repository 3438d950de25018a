"""gopro_prompts/results/tables.py: HM and averages against hand-computed values, the three protocols, renderers, chart."""
from __future__ import annotations

import csv
import io
import json
import math

import pytest

from test_results_parser import write_log, write_record
from gopro_prompts.results import published
from gopro_prompts.results import tables as rt
from gopro_prompts.results.runs import collect


def b2n_tree(root, *, skip=()):
    """CoOp and CoCoOp on OxfordPets and DTD, seeds 1-2, plus zero-shot CLIP (one seed); ``skip``: runs left out."""
    values = {  # (trainer, dataset, subsample) -> accuracy per seed
        ("CoOp", "OxfordPets", "base"): (80.0, 82.0), ("CoOp", "OxfordPets", "new"): (60.0, 64.0),
        ("CoOp", "DescribableTextures", "base"): (70.0, 70.0), ("CoOp", "DescribableTextures", "new"): (50.0, 54.0),
        ("CoCoOp", "OxfordPets", "base"): (78.0, 80.0), ("CoCoOp", "OxfordPets", "new"): (70.0, 72.0),
        ("CoCoOp", "DescribableTextures", "base"): (66.0, 68.0),
        ("CoCoOp", "DescribableTextures", "new"): (58.0, 60.0),
    }
    folders = {"OxfordPets": "oxford_pets", "DescribableTextures": "dtd"}
    for (trainer, dataset, sub), accs in values.items():
        for seed, acc in enumerate(accs, 1):
            if (trainer, dataset, sub, seed) in skip:
                continue
            phase = "train_base" if sub == "base" else "test_new"
            run = root / phase / folders[dataset] / "shots_16" / trainer / "cfg" / f"seed{seed}"
            write_record(run, accuracy=acc, trainer=trainer, dataset=dataset, subsample=sub, seed=seed,
                         config="cfg", eval_only=sub == "new")
    for dataset, (base, new) in {"OxfordPets": (90.0, 95.0), "DescribableTextures": (50.0, 60.0)}.items():
        for sub, acc in (("base", base), ("new", new)):
            run = root / f"test_{sub}" / folders[dataset] / "shots_16" / "ZeroshotCLIP" / "vit_b16" / "seed1"
            write_record(run, accuracy=acc, trainer="ZeroshotCLIP", dataset=dataset, subsample=sub, seed=1,
                         config="vit_b16", eval_only=True)


def rows_by(table):
    return {(r["dataset"], r["method"]): r for r in table.rows}


def test_harmonic_mean_hand_computed():
    assert rt.harmonic_mean(80.0, 70.0) == pytest.approx(2 * 80 * 70 / 150)  # 74.6667
    assert rt.harmonic_mean(80.0, 70.0) == pytest.approx(74.666667, abs=1e-6)
    assert rt.harmonic_mean(0.0, 0.0) == 0.0
    assert rt.harmonic_mean(None, 50.0) is None


def test_base2new_means_hm_and_average_over_datasets(tmp_path):
    b2n_tree(tmp_path)
    table = rt.base2new_table(collect(str(tmp_path)))
    assert table.complete and table.seeds == [1, 2]
    assert table.datasets == ["OxfordPets", "DescribableTextures"]  # the papers' order
    assert table.methods == ["ZeroshotCLIP", "CoOp", "CoCoOp"]
    rows = rows_by(table)
    coop_pets = rows[("OxfordPets", "CoOp")]
    assert coop_pets["base"].mean == 81.0 and coop_pets["new"].mean == 62.0
    assert coop_pets["base"].std == pytest.approx(1.0) and coop_pets["new"].std == pytest.approx(2.0)
    assert coop_pets["hm"] == pytest.approx(2 * 81 * 62 / 143)  # 70.2378: HM of the means
    assert rows[("DescribableTextures", "CoOp")]["hm"] == pytest.approx(2 * 70 * 52 / 122)  # 59.6721
    avg = {a["method"]: a for a in table.average}
    # average over datasets: mean base 75.5, mean new 57, HM of those means 64.9585 (not the mean of HMs, 64.955)
    assert avg["CoOp"]["base"] == pytest.approx(75.5) and avg["CoOp"]["new"] == pytest.approx(57.0)
    assert avg["CoOp"]["hm"] == pytest.approx(2 * 75.5 * 57 / 132.5, abs=1e-9)
    assert avg["CoOp"]["hm"] != pytest.approx((2 * 81 * 62 / 143 + 2 * 70 * 52 / 122) / 2, abs=1e-3)
    assert avg["CoCoOp"]["base"] == pytest.approx(73.0) and avg["CoCoOp"]["new"] == pytest.approx(65.0)
    # zero-shot CLIP: one evaluation per dataset, no seed expected
    assert avg["ZeroshotCLIP"]["base"] == pytest.approx(70.0) and avg["ZeroshotCLIP"]["new"] == pytest.approx(77.5)
    assert avg["ZeroshotCLIP"]["complete"]


def test_missing_seed_is_flagged_and_not_averaged_silently(tmp_path):
    b2n_tree(tmp_path, skip={("CoOp", "DescribableTextures", "new", 2)})
    (tmp_path / "test_new" / "dtd" / "shots_16" / "CoOp" / "cfg" / "seed2").mkdir(parents=True)
    table = rt.base2new_table(collect(str(tmp_path)))
    assert not table.complete
    row = rows_by(table)[("DescribableTextures", "CoOp")]
    assert row["new"].values == {1: 50.0} and not row["new"].complete and not row["complete"]
    assert any("CoOp / DescribableTextures / new: seed2 missing" in p for p in table.problems)
    text = rt.render_terminal(table)
    assert f"50.00 {rt.MARK}" in text and "seed2 missing" in text
    avg = {a["method"]: a for a in table.average}
    assert not avg["CoOp"]["complete"] and avg["CoCoOp"]["complete"]

    # a seed that no method ran at all is only known from --seeds
    table = rt.base2new_table(collect(str(tmp_path)), trainers=["CoCoOp"], seeds=[1, 2, 3])
    assert any("seed3 missing" in p for p in table.problems)


def test_a_dataset_without_runs_for_one_method(tmp_path):
    b2n_tree(tmp_path)
    table = rt.base2new_table(collect(str(tmp_path)), datasets=["oxford_pets", "dtd", "eurosat"],
                              trainers=["CoOp", "MaPLe"])
    assert table.datasets == ["OxfordPets", "DescribableTextures", "EuroSAT"]  # config names accepted
    avg = {a["method"]: a for a in table.average}
    assert avg["CoOp"]["n_datasets"] == 2 and avg["CoOp"]["of"] == 3 and not avg["CoOp"]["complete"]
    assert avg["MaPLe"]["base"] is None  # asked for, never run: reported, not dropped
    assert "Average (2 of 3)" in rt.render_terminal(table)
    assert any(p.startswith("MaPLe / OxfordPets / base") for p in table.problems)


def test_old_style_logs_only_tree(tmp_path):
    for seed, (base, new) in enumerate(((70.0, 60.0), (72.0, 62.0)), 1):
        write_log(tmp_path / "train_base" / "dtd" / "shots_16" / "MaPLe" / "c" / f"seed{seed}", trainer="MaPLe",
                  dataset="DescribableTextures", subsample="base", seed=seed, accuracy=base, config="c",
                  marker="Finished training")
        write_log(tmp_path / "test_new" / "dtd" / "shots_16" / "MaPLe" / "c" / f"seed{seed}", trainer="MaPLe",
                  dataset="DescribableTextures", subsample="new", seed=seed, accuracy=new, config="c", eval_only=True)
    table = rt.base2new_table(collect(str(tmp_path)))
    row = rows_by(table)[("DescribableTextures", "MaPLe")]
    assert table.complete and row["base"].mean == 71.0 and row["new"].mean == 61.0
    assert row["hm"] == pytest.approx(2 * 71 * 61 / 132)


def test_published_figures_agree_with_our_hm_and_average():
    """The published averages are the mean of the dataset rows; the average HM is the HM of those means."""
    for method in published.METHODS:
        rows = published.BASE2NEW[method]
        for base, new, hm in rows.values():
            assert rt.harmonic_mean(base, new) == pytest.approx(hm, abs=0.006)
        avg_base = rt.mean([r[0] for r in rows.values()])
        avg_new = rt.mean([r[1] for r in rows.values()])
        pub = published.BASE2NEW_AVERAGE[method]
        assert avg_base == pytest.approx(pub[0], abs=0.006) and avg_new == pytest.approx(pub[1], abs=0.006)
        assert rt.harmonic_mean(avg_base, avg_new) == pytest.approx(pub[2], abs=0.006)
        xd = published.CROSS_DATASET[method]
        assert rt.mean([xd[t] for t in published.XD_TARGETS]) == pytest.approx(xd["Average"], abs=0.006)


def xd_tree(root):
    """CoOp and GOPro trained on ImageNet (seeds 1-2), evaluated on two XD targets and one DG target."""
    accs = {"CoOp": {"ImageNet": (71.0, 73.0), "Caltech101": (93.0, 95.0), "OxfordPets": (89.0, 89.0),
                     "ImageNetV2": (64.0, 66.0)},
            "GOPro": {"ImageNet": (73.0, 73.0), "Caltech101": (94.0, 96.0), "OxfordPets": (92.0, 94.0),
                      "ImageNetV2": (65.0, 65.0)}}
    for trainer, per_dataset in accs.items():
        for dataset, values in per_dataset.items():
            for seed, acc in enumerate(values, 1):
                if dataset == "ImageNet":
                    run = root / "imagenet" / trainer / "cfg_16shots" / f"seed{seed}"
                else:
                    run = root / "evaluation" / trainer / "cfg_16shots" / dataset.lower() / f"seed{seed}"
                write_record(run, accuracy=acc, trainer=trainer, dataset=dataset, subsample="all", seed=seed,
                             config="cfg", eval_only=dataset != "ImageNet")


def test_cross_dataset_and_domain_generalisation(tmp_path):
    xd_tree(tmp_path)
    runs = collect([str(tmp_path / "imagenet"), str(tmp_path / "evaluation")])
    xd = rt.transfer_table(runs, "xd")
    assert xd.source == "ImageNet" and xd.targets == ["Caltech101", "OxfordPets"]  # DG variants left out
    rows = {r["method"]: r for r in xd.rows}
    assert rows["CoOp"]["cells"]["ImageNet"].mean == 72.0
    assert rows["CoOp"]["average"] == pytest.approx((94.0 + 89.0) / 2)  # average of the targets only
    assert rows["GOPro"]["average"] == pytest.approx((95.0 + 93.0) / 2)
    dg = rt.transfer_table(runs, "dg")
    assert dg.targets == ["ImageNetV2"]
    assert {r["method"]: r["average"] for r in dg.rows} == {"CoOp": 65.0, "GOPro": 65.0}
    text = rt.render_terminal(xd)
    assert "ImageNet (source)" in text and "Average (targets)" in text
    # explicit targets, with one never evaluated
    xd = rt.transfer_table(runs, "xd", source="imagenet", targets=["caltech101", "eurosat"])
    row = {r["method"]: r for r in xd.rows}["CoOp"]
    assert row["n_targets"] == 1 and row["of"] == 2 and not xd.complete


def test_renderers_and_chart(tmp_path):
    b2n_tree(tmp_path / "runs")
    table = rt.base2new_table(collect(str(tmp_path / "runs")))
    md = rt.render_markdown(table)
    assert "| Dataset" in md and "| OxfordPets" in md and "|---" in md.replace("-|-", "|-")
    rows = list(csv.DictReader(io.StringIO(rt.render_csv(table))))
    coop = [r for r in rows if r["dataset"] == "OxfordPets" and r["method"] == "CoOp"][0]
    assert float(coop["base"]) == 81.0 and float(coop["hm"]) == pytest.approx(2 * 81 * 62 / 143, abs=1e-5)
    assert coop["base_n"] == "2"
    data = json.loads(rt.render_json(table))
    assert data["protocol"] == "base2new" and data["complete"] is True
    assert data["average"][1]["method"] == "CoOp" and data["average"][1]["hm"] == pytest.approx(64.9585, abs=1e-4)

    paths = rt.save_all(table, str(tmp_path / "out" / "b2n"))
    for suffix in (".md", ".csv", ".json", ".txt", ".png"):
        assert str(tmp_path / "out" / ("b2n" + suffix)) in paths
    png = (tmp_path / "out" / "b2n.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000

    xd_tree(tmp_path / "xd")
    xd = rt.transfer_table(collect(str(tmp_path / "xd")), "xd")
    chart = rt.plot_chart(xd, str(tmp_path / "xd.png"))
    assert (tmp_path / "xd.png").stat().st_size > 5000 and chart.endswith("xd.png")
    rows = list(csv.DictReader(io.StringIO(rt.render_csv(xd))))
    assert float(rows[0]["average_targets"]) == pytest.approx(91.5)


def test_cli_exit_codes_and_save(tmp_path, capsys):
    b2n_tree(tmp_path / "runs")
    assert rt.main(["base2new", str(tmp_path / "runs"), "--save", str(tmp_path / "t" / "b2n")]) == 0
    out = capsys.readouterr().out
    assert "Base-to-new generalisation" in out and "Average (2)" in out
    assert (tmp_path / "t" / "b2n.png").stat().st_size > 0
    assert rt.main(["base2new", str(tmp_path / "runs"), "--seeds", "1,2,3"]) == 1  # seed 3 missing
    assert "seed3 missing" in capsys.readouterr().out
    assert rt.main(["base2new", str(tmp_path / "runs"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["protocol"] == "base2new"
    assert rt.main(["base2new", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert rt.main(["base2new", str(tmp_path / "runs"), "--trainers", "GOPro", "--datasets", "eurosat"]) == 1


def test_method_labels_tell_variants_apart():
    keys = [("CoOp", "vit_b16_ep50", 16, "ViT-B/16"), ("CoOp", "vit_b16_ep50", 4, "ViT-B/16"),
            ("MaPLe", "c", 16, "ViT-B/16")]
    labels = rt.method_labels(keys)
    assert labels[keys[0]] == "CoOp (16-shot)" and labels[keys[1]] == "CoOp (4-shot)"
    assert labels[keys[2]] == "MaPLe"
    assert not math.isnan(rt.mean([1.0, 2.0]))


def test_synthetic_benchmark_transfer_defaults(tmp_path):
    """SyntheticObjects is the source; its style variants are the DG targets, SyntheticPatterns an XD target."""
    datasets = {"SyntheticObjects": 60.0, "SyntheticPatterns": 30.0, "SyntheticObjectsSketch": 40.0,
                "SyntheticObjectsCartoon": 44.0, "SyntheticObjectsPainting": 48.0}
    for dataset, acc in datasets.items():
        write_record(tmp_path / dataset / "seed1", accuracy=acc, trainer="MaPLe", dataset=dataset, subsample="all",
                     config="c", eval_only=dataset != "SyntheticObjects", backbone="tiny-synthetic")
    runs = collect(str(tmp_path))
    xd = rt.transfer_table(runs, "xd")
    assert xd.source == "SyntheticObjects" and xd.targets == ["SyntheticPatterns"] and xd.complete
    dg = rt.transfer_table(runs, "dg")
    assert dg.targets == ["SyntheticObjectsSketch", "SyntheticObjectsCartoon", "SyntheticObjectsPainting"]
    assert dg.rows[0]["average"] == pytest.approx(44.0)
