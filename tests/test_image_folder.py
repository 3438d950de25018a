"""The ImageFolder dataset (datasets/image_folder.py): the user's own images from a folder or a CSV.

Tiny trees (8x8 PNGs, 2-3 classes) under ``tmp_path`` in each layout: labels, class names and splits,
the fixed-seed split file written once and reused, a read-only data folder, few-shot caches and
base / new classes, one line per kind of bad input, the display name in results.json, the run
folder and the tables, the scripts' output folders, and one ``python train.py`` run end to end.
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gopro_prompts import dassl_compat, run_folder
from gopro_prompts.dassl_compat import DATASET_REGISTRY
from gopro_prompts.datasets.coop_common import DatasetError, DatasetNotFoundError, ImageNotFoundError
from gopro_prompts.registry import register_all
from gopro_prompts.results import record, runs, tables
from gopro_prompts.trainers.config import default_cfg
from gopro_prompts.user_errors import UserError
from helpers import REPO, assert_evaluated_on

register_all()

CONFIG = "configs/datasets/image_folder.yaml"
TINY = ["MODEL.BACKBONE.NAME", "tiny", "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", "1",
        "DATALOADER.NUM_WORKERS", "0"]
_PNG = {}


def png(path, shade=0):
    """A valid 8x8 PNG at ``path`` (parents created)."""
    if shade not in _PNG:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (shade * 60 % 256, 120, 30)).save(buf, "PNG")
        _PNG[shade] = buf.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_PNG[shade])
    return path


def class_tree(folder, classes=("cat", "dog", "sea_lion"), n=6):
    for i, name in enumerate(classes):
        for j in range(n):
            png(Path(folder) / name / f"{name}_{j}.png", i)
    return Path(folder)


def make_cfg(root, out, folder="birds", shots=-1, seed=1, subsample="all", **keys):
    cfg = default_cfg()
    cfg.DATASET.NAME = "ImageFolder"
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.DATASET.IMAGE_FOLDER.DIR = folder
    for key, value in keys.items():
        cfg.DATASET.IMAGE_FOLDER[key] = value
    cfg.SEED = seed
    cfg.OUTPUT_DIR = str(out)
    return cfg


def build(root, folder="birds", out=None, **kwargs):
    """The dataset, with the global ``random`` seeded as train.py seeds it."""
    cfg = make_cfg(root, out or Path(root).parent / "out", folder, **kwargs)
    random.seed(cfg.SEED)
    return DATASET_REGISTRY.get("ImageFolder")(cfg)


def items(data):
    return [(Path(d.impath).name, d.label, d.classname) for d in data]


def per_class(data):
    counts = {}
    for d in data:
        counts[d.classname] = counts.get(d.classname, 0) + 1
    return counts


# ------------------------------------------------------------------------------ class folders
def test_class_folders_are_split_once_with_a_fixed_seed(tmp_path, capsys):
    data = tmp_path / "data"
    class_tree(data / "birds")
    ds = build(data)
    assert ds.classnames == ["cat", "dog", "sea lion"]  # sorted folders, "_" read as a space
    assert ds.lab2cname == {0: "cat", 1: "dog", 2: "sea lion"}
    # CoOp's 50 / 20 / 30 per class: 6 images -> 3 / 1 / 2
    assert [per_class(part) for part in (ds.train_x, ds.val, ds.test)] == [
        {"cat": 3, "dog": 3, "sea lion": 3}, {"cat": 1, "dog": 1, "sea lion": 1}, {"cat": 2, "dog": 2, "sea lion": 2}]
    all_images = {d.impath for part in (ds.train_x, ds.val, ds.test) for d in part}
    assert len(all_images) == 18
    assert all(Path(d.impath).parent.name.replace("_", " ") == d.classname for d in ds.train_x)
    split_file = data / "birds" / "split_image_folder.json"
    saved = json.loads(split_file.read_text())  # CoOp's split format: [path relative to the folder, label, name]
    assert sorted(saved) == ["test", "train", "val"]
    assert sorted(tuple(e) for e in saved["train"]) == sorted(
        (str(Path(d.impath).relative_to(data / "birds")), d.label, d.classname) for d in ds.train_x)
    out = capsys.readouterr().out
    assert "splitting" in out and "fixed seed 1" in out and str(split_file) in out

    # another SEED and another global random state: the file is read, nothing is rewritten
    before = split_file.stat().st_mtime_ns
    random.seed(123)
    again = build(data, seed=7)
    assert [items(p) for p in (again.train_x, again.val, again.test)] == \
        [items(p) for p in (ds.train_x, ds.val, ds.test)]
    assert split_file.stat().st_mtime_ns == before and f"Reading split from {split_file}" in capsys.readouterr().out

    # the split itself does not depend on SEED or the global random: built anew, it is the same
    split_file.unlink()
    build(data, seed=99)
    assert json.loads(split_file.read_text()) == saved


def test_saved_split_is_kept_when_the_folder_changes(tmp_path, capsys):
    data = tmp_path / "data"
    class_tree(data / "birds", n=4)
    first = build(data)
    png(data / "birds" / "cat" / "new.png")
    capsys.readouterr()
    kept = build(data)
    assert items(kept.train_x) == items(first.train_x) and "new.png" not in str(kept.test)
    assert "differs from the split" in capsys.readouterr().out
    Path(first.test[0].impath).unlink()
    with pytest.raises(ImageNotFoundError, match="delete .*split_image_folder.json"):
        build(data)


def test_classnames_file_sets_names_and_label_order(tmp_path):
    data = tmp_path / "data"
    class_tree(data / "birds", classes=("cat", "red-winged_blackbird", "dog"), n=4)
    (data / "birds" / "classnames.txt").write_text("Red-winged Blackbird\ndog\n\ncat\n")
    ds = build(data)
    assert ds.classnames == ["Red-winged Blackbird", "dog", "cat"]
    assert {Path(d.impath).parent.name for d in ds.train_x if d.label == 0} == {"red-winged_blackbird"}


# ------------------------------------------------------------------------------ train/val/test folders
def test_split_folders_with_and_without_val(tmp_path, capsys):
    data = tmp_path / "data"
    for split, n in (("train", 5), ("test", 2)):
        class_tree(data / "flowers" / split, classes=("daisy", "rose"), n=n)
    ds = build(data, "flowers")
    # no val/: 20% of each class's training images (CoOp's split_trainval), fixed seed
    assert per_class(ds.train_x) == {"daisy": 4, "rose": 4} and per_class(ds.val) == {"daisy": 1, "rose": 1}
    assert per_class(ds.test) == {"daisy": 2, "rose": 2}
    assert all("/test/" in d.impath for d in ds.test)
    assert "no val split" in capsys.readouterr().out
    random.seed(5)
    assert items(build(data, "flowers", seed=5).val) == items(ds.val)
    assert not list((data / "flowers").glob("*.json"))  # the folders are the split

    class_tree(data / "flowers" / "val", classes=("daisy", "rose"), n=1)
    given = build(data, "flowers")
    assert per_class(given.train_x) == {"daisy": 5, "rose": 5}
    assert all("/val/" in d.impath for d in given.val)


# ------------------------------------------------------------------------------ CSV
def test_csv_with_split_column(tmp_path):
    folder = tmp_path / "data" / "pets"
    rows = ["path,classname,split"]
    for i, (name, split) in enumerate([("tabby_cat", "train")] * 2 + [("beagle", "train")] * 2 +
                                      [("tabby_cat", "val"), ("beagle", "val"), ("tabby_cat", "test"),
                                       ("beagle", "Test")]):
        png(folder / "imgs" / f"{i}.png", i)
        rows.append(f"imgs/{i}.png,{name},{split}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = build(tmp_path / "data", "pets")
    assert ds.classnames == ["beagle", "tabby cat"]
    assert [len(p) for p in (ds.train_x, ds.val, ds.test)] == [4, 2, 2]
    assert items(ds.test) == [("6.png", 1, "tabby cat"), ("7.png", 0, "beagle")]  # the CSV's order
    assert not list(folder.glob("*.json"))


def test_csv_without_split_column_is_split_and_saved(tmp_path):
    folder = tmp_path / "data" / "pets"
    lines = ["path,classname"] + [f"../pics/{c}{i}.png,{c}" for c in ("a", "b") for i in range(4)]
    for c in ("a", "b"):
        for i in range(4):
            png(folder / "pics" / f"{c}{i}.png")
    (folder / "meta").mkdir(parents=True)
    (folder / "meta" / "list.csv").write_text("\n".join(lines) + "\n")  # paths relative to the CSV's folder
    ds = build(tmp_path / "data", "pets", CSV="meta/list.csv")
    assert [per_class(p) for p in (ds.train_x, ds.val, ds.test)] == [{"a": 2, "b": 2}, {"a": 1, "b": 1},
                                                                      {"a": 1, "b": 1}]
    saved = json.loads((folder / "split_image_folder_list.json").read_text())
    assert sorted(e[0] for e in saved["test"]) == sorted(str(Path(d.impath).relative_to(folder)) for d in ds.test)


# ------------------------------------------------------------------------------ read-only data
def test_read_only_folder_keeps_split_and_caches_with_the_outputs(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    class_tree(data / "birds", classes=("cat", "dog"), n=4)
    out = tmp_path / "run"
    os.chmod(data / "birds", 0o555)
    try:
        if os.access(data / "birds", os.W_OK):  # root: chmod does not stop it, so the check is told so
            access = os.access
            monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
                False if Path(path) == data / "birds" and mode & os.W_OK else access(path, mode, **kw)))
        ds = build(data, out=out, shots=1)
        store = out / "image_folder_split"
        assert (store / "split_image_folder.json").is_file()
        assert (store / "split_fewshot" / "shot_1-seed_1.pkl").is_file()
        assert sorted(p.name for p in (data / "birds").iterdir()) == ["cat", "dog"]
        assert f"is read-only: its split file and few-shot caches go to {store}" in capsys.readouterr().out
        again = build(data, out=out, shots=1)
        assert items(again.train_x) == items(ds.train_x)
        assert "Loading preprocessed few-shot data" in capsys.readouterr().out
    finally:
        os.chmod(data / "birds", 0o755)


# ------------------------------------------------------------------------------ few-shot, base / new
def test_fewshot_cache_and_base_new_classes(tmp_path, capsys):
    data = tmp_path / "data"
    class_tree(data / "birds", n=8)  # 4 train / 2 val / 2 test per class
    full = build(data)
    ds = build(data, shots=2, seed=3)
    cache = data / "birds" / "split_fewshot" / "shot_2-seed_3.pkl"
    assert cache.is_file() and per_class(ds.train_x) == {"cat": 2, "dog": 2, "sea lion": 2}
    assert {d.impath for d in ds.train_x} <= {d.impath for d in full.train_x}
    assert len(ds.test) == len(full.test)
    base = build(data, shots=2, seed=3, subsample="base")
    new = build(data, shots=2, seed=3, subsample="new")
    assert base.classnames == ["cat", "dog"] and new.classnames == ["sea lion"]
    assert {d.label for d in new.train_x + new.test} == {0}
    assert items(base.train_x) == [i for i in items(ds.train_x) if i[1] < 2]  # the same cached shots
    assert "Loading preprocessed few-shot data" in capsys.readouterr().out

    # a cache sampled from another split (the split file edited since) is refused
    split_file = data / "birds" / "split_image_folder.json"
    saved = json.loads(split_file.read_text())
    picked = {str(Path(d.impath).relative_to(data / "birds")) for d in ds.train_x}
    saved["test"] += [e for e in saved["train"] if e[0] in picked]
    saved["train"] = [e for e in saved["train"] if e[0] not in picked]
    split_file.write_text(json.dumps(saved))
    with pytest.raises(DatasetError, match="few-shot cache .* not in the current train split"):
        build(data, shots=2, seed=3)


# ------------------------------------------------------------------------------ bad input
def _tree(kind, folder):
    """Write a broken tree of the given kind under ``folder``; returns extra dataset keys."""
    if kind in ("empty_class", "non_image", "classnames_other", "classnames_twice", "duplicate_class",
                "too_few", "val_without_train"):
        class_tree(folder, classes=("cat", "dog"), n=4)
    if kind == "empty_dir":
        folder.mkdir(parents=True)
    elif kind == "empty_class":
        (folder / "bird").mkdir()
    elif kind == "non_image":
        (folder / "dog" / "notes.jpg").write_text("not an image")
    elif kind == "classnames_other":
        (folder / "classnames.txt").write_text("cat\nhorse\n")
    elif kind == "classnames_twice":
        (folder / "classnames.txt").write_text("cat\ndog\nCat\n")
    elif kind == "duplicate_class":
        class_tree(folder, classes=("Dog",), n=4)
    elif kind == "too_few":
        class_tree(folder, classes=("owl",), n=3)
    elif kind == "val_without_train":
        class_tree(folder / "val", classes=("cat",), n=1)
    elif kind == "test_class_not_in_train":
        class_tree(folder / "train", classes=("cat", "dog"), n=3)
        class_tree(folder / "test", classes=("cat", "cow"), n=1)
    elif kind.startswith("csv_"):
        png(folder / "a.png")
        png(folder / "b.png")
        body = {
            "csv_missing_column": "path,label\na.png,cat\n",
            "csv_empty_class": "path,classname\na.png,cat\nb.png,  \n",
            "csv_short_row": "path,classname,split\na.png,cat,train\nb.png,cat\n",
            "csv_bad_split": "path,classname,split\na.png,cat,train\nb.png,cat,training\n",
            "csv_test_only_class": "path,classname,split\na.png,cat,train\nb.png,dog,test\n",
            "csv_missing_image": "path,classname\na.png,cat\nc.png,cat\n",
        }[kind]
        (folder / "labels.csv").write_text(body)
    elif kind == "missing_csv_key":
        class_tree(folder, classes=("cat",), n=4)
        return {"CSV": "nope.csv"}
    elif kind == "reserved_name":
        class_tree(folder, classes=("cat", "dog"), n=4)
        return {"NAME": "DescribableTextures"}
    elif kind == "bad_name":
        class_tree(folder, classes=("cat", "dog"), n=4)
        return {"NAME": "my/birds"}
    return {}


BAD_INPUT = [
    ("no_dir", DatasetNotFoundError, "birds is not found"),
    ("empty_dir", DatasetNotFoundError, "is empty: put one folder of images per class"),
    ("empty_class", DatasetError, "class folder .*bird is empty"),
    ("non_image", OSError, "notes.jpg.*not an image"),
    ("classnames_other", DatasetError, "classnames.txt has other classes.*lists 'horse'.*misses 'dog'"),
    ("classnames_twice", DatasetError, "line 3 repeats the class 'Cat' of line 1"),
    ("duplicate_class", DatasetError, "'Dog' and 'dog'.*same class name"),
    ("too_few", DatasetError, "class 'owl' has 3 image.*too few"),
    ("val_without_train", DatasetError, "has val/ but no train/"),
    ("test_class_not_in_train", DatasetError, "test/cow/ has no counterpart in train/"),
    ("csv_missing_column", DatasetError, "labels.csv line 1 .*lacks the column.*classname"),
    ("csv_empty_class", DatasetError, "labels.csv line 3: the classname of b.png is empty"),
    ("csv_short_row", DatasetError, "labels.csv line 3 has 2 field"),
    ("csv_bad_split", DatasetError, "labels.csv line 3: the split 'training' is not train, val or test"),
    ("csv_test_only_class", DatasetError, "labels.csv line 3: class 'dog' is in test but has no train row"),
    ("csv_missing_image", ImageNotFoundError, "labels.csv line 3 names .*c.png"),
    ("missing_csv_key", DatasetNotFoundError, "DATASET.IMAGE_FOLDER.CSV nope.csv not found"),
    ("reserved_name", UserError, "'DescribableTextures' is taken by the benchmark dataset"),
    ("bad_name", UserError, "display name 'my/birds' must be"),
]


@pytest.mark.parametrize("kind, error, message", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_is_one_line_naming_it(tmp_path, kind, error, message):
    keys = {} if kind == "no_dir" else _tree(kind, tmp_path / "data" / "birds")
    with pytest.raises(error, match=message) as info:
        build(tmp_path / "data", **keys)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, UserError) or kind == "non_image"  # the engine's OSError: one line too


def test_empty_dir_key_and_a_default_name_taken_by_a_benchmark(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="DATASET.IMAGE_FOLDER.DIR is empty"):
        build(tmp_path, "")
    class_tree(tmp_path / "dtd", classes=("a", "b"), n=4)
    with pytest.raises(UserError, match="'dtd' is taken.*set DATASET.IMAGE_FOLDER.NAME"):
        build(tmp_path, "dtd")
    assert build(tmp_path, "dtd", NAME="my_dtd").classnames == ["a", "b"]


# ------------------------------------------------------------------------------ the display name
def test_display_name_in_record_run_folder_and_config_names(tmp_path):
    cfg = make_cfg(tmp_path, tmp_path / "out", "photos/My Birds!")
    assert record.dataset_label(cfg) == "My_Birds"  # the folder's base name, made a safe folder name
    cfg.DATASET.IMAGE_FOLDER.NAME = "cub"
    assert record.build_record(cfg, {"accuracy": 50.0}, split="test", epoch=1)["dataset"] == "cub"
    assert run_folder.eval_output_dir(cfg, "m", None) == os.path.join("m", "eval", "cub_all_model-best")
    other = default_cfg()
    other.DATASET.NAME = "DescribableTextures"
    other.DATASET.IMAGE_FOLDER.NAME = "cub"  # read by ImageFolder only
    assert record.dataset_label(other) == "DescribableTextures"
    # a results.json made on another user dataset is named in the refusal
    cfg.DATASET.IMAGE_FOLDER.NAME = ""
    cfg.DATASET.IMAGE_FOLDER.DIR = "cars"
    assert run_folder._results_changes({"dataset": "cub"}, cfg) == ["DATASET.IMAGE_FOLDER.NAME: 'cub' -> 'cars'"]
    assert run_folder._results_changes({"dataset": "cub"}, other) == [
        "DATASET.NAME: 'cub' -> 'DescribableTextures'"]

    configs = tmp_path / "configs"
    configs.mkdir()
    shutil.copy(REPO / CONFIG, configs / "image_folder.yaml")
    (configs / "birds.yaml").write_text('DATASET:\n  NAME: "ImageFolder"\n  IMAGE_FOLDER:\n    DIR: "cub_200"\n')
    (configs / "dtd.yaml").write_text('DATASET:\n  NAME: "DescribableTextures"\n')
    assert runs.dataset_config_names(str(configs)) == {"birds": "cub_200", "dtd": "DescribableTextures"}
    assert runs.reserved_dataset_names(str(configs)) == ["DescribableTextures", "dtd"]
    assert run_folder.dataset_folder_name(str(configs / "birds.yaml")) == "cub_200"
    assert run_folder.dataset_folder_name(str(configs / "birds.yaml"), "",
                                          ["DATASET.IMAGE_FOLDER.NAME", "cub"]) == "cub"
    assert run_folder.dataset_folder_name(str(configs / "dtd.yaml"), "", ["DATASET.IMAGE_FOLDER.DIR", "x"]) == "dtd"
    with pytest.raises(UserError, match="give the folder of your images with DATASET.IMAGE_FOLDER.DIR"):
        run_folder.dataset_folder_name(str(configs / "image_folder.yaml"))


def test_compare_dry_run_names_the_output_folders_after_the_display_name(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    env = {**os.environ, "PYTHON": sys.executable, "DATA": str(tmp_path), "OUTPUT": str(tmp_path / "o"),
           "DRY_RUN": "1"}
    for key in ("CFG", "LOAD_EPOCH", "SHOTS", "XD_SOURCE"):
        env.pop(key, None)

    def compare(*args):
        return subprocess.run(["bash", str(REPO / "scripts" / "compare.sh"), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    proc = compare("base2new", "image_folder", "1", "CoOp", "DATASET.IMAGE_FOLDER.DIR", "birds")
    assert proc.returncode == 0, proc.stderr
    commands = [line.split() for line in proc.stdout.splitlines()
                if line.startswith("(dry run)") and "train.py" in line]
    tail = "birds/shots_16/CoOp/vit_b16_ep50_ctxv1/seed1"
    assert [c[c.index("--output-dir") + 1] for c in commands] == [
        f"{tmp_path}/o/base2new/train_base/{tail}", f"{tmp_path}/o/base2new/test_new/{tail}"]
    assert all(CONFIG in c and c[-1] == "birds" for c in commands)
    assert "--datasets birds --trainers CoOp" in proc.stdout
    bad = compare("base2new", "image_folder", "1", "CoOp")
    assert bad.returncode == 2 and bad.stderr.startswith("error: image_folder: give the folder of your images")


# ------------------------------------------------------------------------------ end to end
def test_train_py_end_to_end_with_the_display_name(tmp_path, capfd):
    """CoOp, 1 epoch, 2 shots, base classes of a 3-class folder: results.json, run record, tables."""
    data = tmp_path / "data"
    class_tree(data / "birds", n=7)  # 4 train / 1 val / 2 test per class
    out = tmp_path / "out"
    argv = ["--root", str(data), "--trainer", "CoOp", "--dataset-config-file", CONFIG,
            "--config-file", "configs/trainers/CoOp/vit_b16_ep50.yaml", "--output-dir", str(out), "--seed", "1",
            "DATASET.IMAGE_FOLDER.DIR", "birds", *TINY, "DATASET.NUM_SHOTS", "2",
            "DATASET.SUBSAMPLE_CLASSES", "base", "TRAINER.COOP.N_CTX", "4"]
    proc = subprocess.run([sys.executable, "train.py", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert f"Dassl backend: {dassl_compat.BACKEND}" in log and "SUBSAMPLE BASE CLASSES!" in log
    assert_evaluated_on(log, 4)  # the test images of the base classes cat and dog
    result = json.loads((out / "results.json").read_text())
    assert result["dataset"] == "birds" and result["subsample"] == "base" and result["shots"] == 2
    assert (data / "birds" / "split_fewshot" / "shot_2-seed_1.pkl").is_file()

    # the run folder: another user folder is refused by name, before anything is written
    from gopro_prompts import train

    capfd.readouterr()
    code = train.cli([*argv[:-6], "DATASET.IMAGE_FOLDER.DIR", "cars", *argv[-6:]])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "DATASET.IMAGE_FOLDER.DIR: 'birds' -> 'cars'" in err[0]

    # a log without results.json names the dataset as results.json does; the table has its row
    copy = tmp_path / "base2new" / "train_base" / "birds" / "shots_2" / "CoOp" / "vit_b16_ep50" / "seed1"
    copy.mkdir(parents=True)
    shutil.copy(out / "log.txt", copy / "log.txt")
    assert runs.read_run(str(copy)).info["dataset"] == "birds"
    shutil.copy(out / "results.json", copy / "results.json")
    table = tables.base2new_table(runs.collect(str(tmp_path / "base2new")), datasets=["birds"])
    assert [row["dataset"] for row in table.rows] == ["birds"]
    assert table.rows[0]["base"].mean == pytest.approx(result["metrics"]["accuracy"])
