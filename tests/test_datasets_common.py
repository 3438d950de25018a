"""Shared CoOp dataset helpers and the Dassl-compatible pickle caches
(as CoOp's ``datasets/oxford_pets.py`` and ``dtd.py`` helpers)."""
import json
import os
import pickle
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import touch_jpeg
from gopro_prompts.registry import register_all
from gopro_prompts.dassl_compat import DATASET_REGISTRY, Datum, get_cfg_default
from gopro_prompts.datasets import coop_common
from gopro_prompts.datasets.coop_common import (
    CacheError,
    DatasetNotFoundError,
    ImageNotFoundError,
    check_layout,
    read_and_split_data,
    read_split,
    save_split,
    split_trainval,
    subsample_classes,
)
from gopro_prompts.datasets.datum_pickle import dump_datum_pickle, load_datum_pickle, save_datum_pickle

register_all()  # our datasets and trainers in the backend's registries

# A stand-in for real Dassl's ``dassl.data.datasets.base_dataset`` (plain class with the
# same four instance attributes), used in subprocesses to play "a CoOp run with Dassl".
FAKE_DASSL_DATUM = textwrap.dedent('''
    class Datum:
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath = impath
            self._label = label
            self._domain = domain
            self._classname = classname
''')


@pytest.fixture
def fake_dassl(tmp_path):
    """A directory to put on PYTHONPATH so that ``import dassl...base_dataset`` works."""
    pkg = tmp_path / "fake" / "dassl" / "data" / "datasets"
    pkg.mkdir(parents=True)
    for d in (pkg, pkg.parent, pkg.parent.parent):
        (d / "__init__.py").write_text("")
    (pkg / "base_dataset.py").write_text(FAKE_DASSL_DATUM)
    return tmp_path / "fake"


def run_with_fake_dassl(fake_dir, code):
    env = dict(os.environ, PYTHONPATH=str(fake_dir))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, cwd=str(fake_dir))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def make_items(tmp_path, n=6):
    items = []
    for i in range(n):
        path = tmp_path / "img" / f"c{i % 3}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        items.append(Datum(impath=str(path), label=i % 3, classname=f"class {i % 3}"))
    return items


# ---------------------------------------------------------------------------
# Pickle caches
# ---------------------------------------------------------------------------


def test_cache_bytes_identical_to_real_dassl_and_readable_there(tmp_path, fake_dassl):
    items = make_items(tmp_path)
    path = tmp_path / "shot_1-seed_1.pkl"
    save_datum_pickle({"train": items, "val": items[:2]}, str(path))
    code = textwrap.dedent(f'''
        import pickle
        from dassl.data.datasets.base_dataset import Datum
        data = pickle.load(open({str(path)!r}, "rb"))
        d = data["train"][4]
        assert type(d) is Datum and d.__dict__ == {{"_impath": {items[4].impath!r}, "_label": 1,
            "_domain": 0, "_classname": "class 1"}}, d.__dict__
        items = [Datum(x._impath, x._label, x._domain, x._classname) for x in data["train"]]
        same = pickle.dumps({{"train": items, "val": items[:2]}}, protocol=pickle.HIGHEST_PROTOCOL)
        print(same == open({str(path)!r}, "rb").read())
    ''')
    assert run_with_fake_dassl(fake_dassl, code).strip() == "True"
    assert path.read_bytes()[:2] == b"\x80\x05"  # protocol 5


def test_cache_written_by_dassl_is_used_by_dataset(tmp_path, fake_dassl, capsys):
    """A CoOp/MaPLe cache (pickled with Dassl's class path) is read as it is."""
    dtd = tmp_path / "dtd"
    split = {"train": [], "val": [], "test": []}
    for key, n in (("train", 4), ("val", 2), ("test", 2)):
        for label in range(2):
            for i in range(n):
                rel = f"t{label}/{key}{i}.jpg"
                (dtd / "images" / f"t{label}").mkdir(parents=True, exist_ok=True)
                touch_jpeg(dtd / "images" / rel)  # val / test images are checked before training
                split[key].append([rel, label, f"t{label}"])
    (dtd / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    cache = dtd / "split_fewshot" / "shot_1-seed_4.pkl"
    cache.parent.mkdir()
    chosen = [str(dtd / "images" / "t0" / "train3.jpg"), str(dtd / "images" / "t1" / "train0.jpg")]
    code = textwrap.dedent(f'''
        import pickle
        from dassl.data.datasets.base_dataset import Datum
        tr = [Datum({chosen[0]!r}, 0, 0, "t0"), Datum({chosen[1]!r}, 1, 0, "t1")]
        pickle.dump({{"train": tr, "val": tr[:1]}}, open({str(cache)!r}, "wb"),
                    protocol=pickle.HIGHEST_PROTOCOL)
    ''')
    run_with_fake_dassl(fake_dassl, code)

    cfg = get_cfg_default()
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    cfg.DATASET.ROOT = str(tmp_path)
    cfg.DATASET.NUM_SHOTS = 1
    cfg.SEED = 4
    ds = DATASET_REGISTRY.get("DescribableTextures")(cfg)
    assert f"Loading preprocessed few-shot data from {cache}" in capsys.readouterr().out
    assert [d.impath for d in ds.train_x] == chosen
    assert all(type(d) is Datum for d in ds.train_x + ds.val)
    assert ds.classnames == ["t0", "t1"] and len(ds.val) == 1


def test_bundled_class_path_readable_and_constructor_not_called(tmp_path):
    items = make_items(tmp_path, 3)
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"train": items}, protocol=5))  # current class path
    os.remove(items[0].impath)  # the constructor would refuse a missing file
    data = load_datum_pickle(str(path))
    assert [(d.impath, d.label, d.domain, d.classname) for d in data["train"]] == [
        (d.impath, d.label, d.domain, d.classname) for d in items
    ]
    assert type(data["train"][0]) is Datum


def test_foreign_or_corrupt_pickles_are_refused(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"train": [os.getcwd]}, protocol=5))
    with pytest.raises(CacheError, match="posix.getcwd|os.getcwd"):
        load_datum_pickle(str(evil))
    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(dump_datum_pickle({"train": make_items(tmp_path)})[:40])
    with pytest.raises(CacheError, match="delete it"):
        load_datum_pickle(str(truncated))


def test_stale_fewshot_cache_names_missing_images(tmp_path):
    items = make_items(tmp_path, 3)
    cache = tmp_path / "c.pkl"
    save_datum_pickle({"train": items, "val": []}, str(cache))
    os.remove(items[1].impath)
    with pytest.raises(ImageNotFoundError, match="1.jpg"):
        coop_common.load_fewshot_cache(str(cache))


# ---------------------------------------------------------------------------
# Split files
# ---------------------------------------------------------------------------


def test_save_split_substring_rule_and_read_back(tmp_path, capsys):
    prefix = str(tmp_path / "img")
    items = make_items(tmp_path)
    path = tmp_path / "split.json"
    save_split(items[:3], items[3:4], items[4:], str(path), prefix)
    assert f"Saved split to {path}" in capsys.readouterr().out
    raw = path.read_text()
    assert '    "train": [\n        [\n            "c0/0.jpg",' in raw  # indent 4, like write_json
    split = json.loads(raw)
    assert split["train"][1] == ["c1/1.jpg", 1, "class 1"]
    train, val, test = read_split(str(path), prefix)
    assert f"Reading split from {path}" in capsys.readouterr().out
    assert [d.impath for d in train + val + test] == [d.impath for d in items]
    # A plain substring replace, then one leading "/" dropped (not a prefix strip).
    assert coop_common._relative("/a/x/b/x/c.jpg", "/x") == "a/b/c.jpg"
    assert coop_common._relative("/d/images/c.jpg", "/d/images/") == "c.jpg"


def test_read_split_reports_missing_images(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(
        {"train": [["a.jpg", 0, "a"], ["b.jpg", 1, "b"]], "val": [], "test": []}))
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(ImageNotFoundError) as info:
        read_split(str(tmp_path / "s.json"), str(tmp_path))
    assert str(tmp_path / "b.jpg") in str(info.value) and "s.json" in str(info.value)


# ---------------------------------------------------------------------------
# Split generation
# ---------------------------------------------------------------------------


def test_split_trainval_exact_rng_use(tmp_path, capsys):
    # labels in first-appearance order 2, 0, 1; counts 5, 12, 13 -> n_val 1, 2, 3
    labels = [2] * 5 + [0] * 12 + [1] * 13
    path = tmp_path / "x.jpg"
    path.write_bytes(b"x")
    items = [Datum(impath=str(path), label=y, classname=str(i)) for i, y in enumerate(labels)]
    random.seed(3)
    train, val = split_trainval(items)
    assert "Splitting trainval into 80% train and 20% val" in capsys.readouterr().out
    random.seed(3)
    exp_train, exp_val = [], []
    for lab, n_val in ((2, 1), (0, 2), (1, 3)):
        idxs = [i for i, y in enumerate(labels) if y == lab]
        random.shuffle(idxs)
        exp_val += idxs[:n_val]
        exp_train += idxs[n_val:]
    assert [int(d.classname) for d in val] == exp_val
    assert [int(d.classname) for d in train] == exp_train

    with pytest.raises(ValueError, match="'0'"):
        split_trainval([items[0], items[5]])  # 1 item per class -> no val share


def test_read_and_split_data_rounds_half_to_even(tmp_path):
    for cat, n in (("b", 5), ("a", 7)):
        for i in range(n):
            (tmp_path / cat).mkdir(exist_ok=True)
            (tmp_path / cat / f"{i}.jpg").write_bytes(b"x")
    train, val, test = read_and_split_data(str(tmp_path), new_cnames={"a": "A!"})
    counts = {(d.label, k): 0 for d in train for k in "tvs"}
    for k, part in zip("tvs", (train, val, test)):
        for d in part:
            counts[(d.label, k)] = counts.get((d.label, k), 0) + 1
    # "a" (label 0): 7 -> round(3.5)=4 / round(1.4)=1 / 2 ; "b": 5 -> round(2.5)=2 / 1 / 2
    assert [counts[(0, k)] for k in "tvs"] == [4, 1, 2]
    assert [counts[(1, k)] for k in "tvs"] == [2, 1, 2]
    assert {d.classname for d in train if d.label == 0} == {"A!"}
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "0.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="Cannot split"):
        read_and_split_data(str(tmp_path))


# ---------------------------------------------------------------------------
# Base / new, short classes, layout errors
# ---------------------------------------------------------------------------


def test_subsample_classes(tmp_path, capsys):
    path = tmp_path / "x.jpg"
    path.write_bytes(b"x")
    train = [Datum(impath=str(path), label=y, classname=f"c{y}") for y in (4, 0, 6, 2, 4)]
    test = [Datum(impath=str(path), label=y, classname=f"c{y}") for y in (0, 2, 4, 6, 8)]
    assert subsample_classes(train, test, subsample="all") == (train, test)
    base_train, base_test = subsample_classes(train, test, subsample="base")
    assert "SUBSAMPLE BASE CLASSES!" in capsys.readouterr().out
    # labels of train {0,2,4,6}: base = {0,2} -> 0,1 ; new = {4,6} -> 0,1; 8 is dropped
    assert [(d.label, d.classname) for d in base_train] == [(0, "c0"), (1, "c2")]
    new_train, new_test = subsample_classes(train, test, subsample="new")
    assert [(d.label, d.classname) for d in new_train] == [(0, "c4"), (1, "c6"), (0, "c4")]
    assert [d.classname for d in new_test] == ["c4", "c6"]
    assert new_train[0] is not train[0]
    with pytest.raises(ValueError):
        subsample_classes(train, subsample="half")


def test_short_class_warning_names_class(tmp_path, capsys):
    path = tmp_path / "x.jpg"
    path.write_bytes(b"x")
    items = [Datum(impath=str(path), label=y, classname=f"c{y}") for y in (0, 0, 0, 1)]
    coop_common._warn_short_classes("Toy", items, 2, "train")
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) == 1 and "'c1'" in lines[0] and "Toy" in lines[0]


def test_check_layout_one_line_listing_all(tmp_path):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(tmp_path)
    (tmp_path / "ds").mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        check_layout("Toy", cfg, str(tmp_path / "ds"), ["imgs/", "a.txt"],
                     [("split.json", ("src1.txt", "src2.txt"))])
    msg = str(info.value)
    assert "\n" not in msg
    for part in ("imgs/", "a.txt", "split.json (or, to build it, src1.txt + src2.txt)",
                 "DATASETS.md", "Toy", str(tmp_path / "ds")):
        assert part in msg
    (tmp_path / "ds" / "split.json").write_text("{}")
    (tmp_path / "ds" / "imgs").mkdir()
    (tmp_path / "ds" / "a.txt").write_text("")
    check_layout("Toy", cfg, str(tmp_path / "ds"), ["imgs/", "a.txt"],
                 [("split.json", ("src1.txt", "src2.txt"))])


def test_all_configs_name_registered_datasets():
    import yaml

    cfg_dir = Path(__file__).resolve().parents[1] / "configs" / "datasets"
    expected = {
        "imagenet": "ImageNet", "caltech101": "Caltech101", "oxford_pets": "OxfordPets",
        "stanford_cars": "StanfordCars", "oxford_flowers": "OxfordFlowers", "food101": "Food101",
        "fgvc_aircraft": "FGVCAircraft", "sun397": "SUN397", "dtd": "DescribableTextures",
        "eurosat": "EuroSAT", "ucf101": "UCF101", "imagenetv2": "ImageNetV2",
        "imagenet_sketch": "ImageNetSketch", "imagenet_a": "ImageNetA", "imagenet_r": "ImageNetR",
    }
    for stem, name in expected.items():
        data = yaml.safe_load((cfg_dir / f"{stem}.yaml").read_text())
        assert data == {"DATASET": {"NAME": name}}
        assert name in DATASET_REGISTRY.registered_names()
        cfg = get_cfg_default()
        cfg.merge_from_file(str(cfg_dir / f"{stem}.yaml"))
        assert cfg.DATASET.NAME == name
