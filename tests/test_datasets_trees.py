"""The 11 few-shot CoOp datasets read from miniature on-disk trees in their real layout.

Each test builds a tiny copy of a dataset folder (8x8 JPEGs, split / annotation
files in their real formats) under ``tmp_path`` and reads it through
``DATASET_REGISTRY`` (as CoOp's ``datasets/`` readers).
"""
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from gopro_prompts.registry import register_all
from gopro_prompts.dassl_compat import DATASET_REGISTRY
from gopro_prompts.datasets.coop_common import DatasetNotFoundError, ImageNotFoundError
from helpers import dataset_cfg, touch_jpeg

register_all()  # our datasets and trainers in the backend's registries


make_cfg = dataset_cfg


def build(root, name, shots=-1, seed=1, subsample="all"):
    """Construct a dataset through the registry with Python ``random`` seeded like train.py."""
    random.seed(seed)
    return DATASET_REGISTRY.get(name)(make_cfg(root, name, shots, seed, subsample))


# ---------------------------------------------------------------------------
# Split-file trees: (dataset dir, image prefix, split file, classes, path maker)
# Each class is (folder-ish stem, class name stored in the split file).
# ---------------------------------------------------------------------------

COUNTS = {"train": 5, "val": 2, "test": 3}


def _pets_rel(stem, split, i, uid):
    return f"{stem}_{uid}.jpg"


def _folder_rel(stem, split, i, uid):
    return f"{stem}/{stem}_{uid:04d}.jpg"


def _cars_rel(stem, split, i, uid):
    return f"cars_{'test' if split == 'test' else 'train'}/{uid:05d}.jpg"


def _flowers_rel(stem, split, i, uid):
    return f"image_{uid:05d}.jpg"


def _sun_rel(stem, split, i, uid):
    return f"{stem}/sun_{uid:06d}.jpg"


def _ucf_rel(stem, split, i, uid):
    action = stem.replace("_", "")
    return f"{stem}/v_{action}_g{uid:02d}_c01.jpg"


SPLIT_SPECS = {
    "Caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                   [("Faces", "face"), ("Leopards", "leopard"), ("Motorbikes", "motorbike"),
                    ("accordion", "accordion"), ("airplanes", "airplane")], _folder_rel),
    "OxfordPets": ("oxford_pets", "images", "split_zhou_OxfordPets.json",
                   [("Abyssinian", "abyssinian"), ("Bengal", "bengal"),
                    ("american_bulldog", "american_bulldog"), ("basset_hound", "basset_hound"),
                    ("yorkshire_terrier", "yorkshire_terrier")], _pets_rel),
    "StanfordCars": ("stanford_cars", "", "split_zhou_StanfordCars.json",
                     [("", "2000 AM General Hummer SUV"), ("", "2012 Acura RL Sedan"),
                      ("", "2012 Audi TT RS Coupe"), ("", "2007 BMW X5 SUV"),
                      ("", "2012 Tesla Model S Sedan")], _cars_rel),
    "OxfordFlowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                      [("", "pink primrose"), ("", "hard-leaved pocket orchid"),
                       ("", "canterbury bells"), ("", "sweet pea"), ("", "english marigold")],
                      _flowers_rel),
    "Food101": ("food-101", "images", "split_zhou_Food101.json",
                [("apple_pie", "apple_pie"), ("baby_back_ribs", "baby_back_ribs"),
                 ("baklava", "baklava"), ("beef_carpaccio", "beef_carpaccio"),
                 ("beef_tartare", "beef_tartare")], _folder_rel),
    "SUN397": ("sun397", "SUN397", "split_zhou_SUN397.json",
               [("a/abbey", "abbey"), ("a/airplane_cabin", "airplane_cabin"),
                ("a/apartment_building/outdoor", "outdoor apartment_building"),
                ("b/bakery/shop", "shop bakery"), ("z/zen_garden", "zen_garden")], _sun_rel),
    "DescribableTextures": ("dtd", "images", "split_zhou_DescribableTextures.json",
                            [("banded", "banded"), ("blotchy", "blotchy"), ("braided", "braided"),
                             ("bubbly", "bubbly"), ("bumpy", "bumpy")], _folder_rel),
    "EuroSAT": ("eurosat", "2750", "split_zhou_EuroSAT.json",
                [("AnnualCrop", "Annual Crop Land"), ("Forest", "Forest"),
                 ("HerbaceousVegetation", "Herbaceous Vegetation Land"),
                 ("Highway", "Highway or Road"), ("Industrial", "Industrial Buildings")],
                _folder_rel),
    "UCF101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
               [("Apply_Eye_Makeup", "Apply_Eye_Makeup"), ("Apply_Lipstick", "Apply_Lipstick"),
                ("Archery", "Archery"), ("Baby_Crawling", "Baby_Crawling"), ("Yo_Yo", "Yo_Yo")],
               _ucf_rel),
}


def make_split_tree(root, name, counts=COUNTS):
    """Write the images and the ``split_zhou_*.json`` of ``name``; return the split dict."""
    ds_dir, prefix, split_file, classes, rel = SPLIT_SPECS[name]
    dataset_dir = Path(root) / ds_dir
    uid = 1
    split = {}
    for key in ("train", "val", "test"):
        entries = []
        for label, (stem, cname) in enumerate(classes):
            for i in range(counts[key]):
                path = rel(stem, key, i, uid)
                uid += 1
                touch_jpeg(dataset_dir / prefix / path)
                entries.append([path, label, cname])
        split[key] = entries
    with open(dataset_dir / split_file, "w") as f:
        json.dump(split, f, indent=4)
    return split


def make_fgvc_tree(root, n_per_split=(5, 2, 3)):
    """fgvc_aircraft/: images/<id>.jpg, variants.txt, images_variant_{train,val,test}.txt."""
    dataset_dir = Path(root) / "fgvc_aircraft"
    variants = ["707-320", "727-200", "A300B4", "BAE 146-200", "Cessna 172"]
    dataset_dir.mkdir(parents=True)
    (dataset_dir / "variants.txt").write_text("".join(v + "\n" for v in variants))
    uid = 1000000
    for key, count in zip(("train", "val", "test"), n_per_split):
        lines = []
        for variant in variants:
            for _ in range(count):
                touch_jpeg(dataset_dir / "images" / f"{uid}.jpg")
                lines.append(f"{uid} {variant}\n")
                uid += 1
        (dataset_dir / f"images_variant_{key}.txt").write_text("".join(lines))
    return variants


ALL_FEWSHOT = sorted(SPLIT_SPECS) + ["FGVCAircraft"]


def make_tree(root, name):
    if name == "FGVCAircraft":
        make_fgvc_tree(root)
        return ["707-320", "727-200", "A300B4", "BAE 146-200", "Cessna 172"]
    make_split_tree(root, name)
    return [cname for _, cname in SPLIT_SPECS[name][3]]


# ---------------------------------------------------------------------------
# Reading the trees through the registry
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_FEWSHOT)
def test_full_dataset_from_split(tmp_path, name, capsys):
    classnames = make_tree(tmp_path, name)
    ds = build(tmp_path, name)
    out = capsys.readouterr().out
    if name != "FGVCAircraft":
        assert "Reading split from " in out
    assert ds.classnames == classnames
    assert ds.num_classes == 5
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (25, 10, 15)
    for items in (ds.train_x, ds.val, ds.test):
        assert sorted({it.label for it in items}) == list(range(5))
        assert all(os.path.isfile(it.impath) for it in items)
    # As CoOp: split_fewshot/ is created on every construction.
    assert Path(ds.split_fewshot_dir) == Path(ds.dataset_dir) / "split_fewshot"
    assert Path(ds.split_fewshot_dir).is_dir()


@pytest.mark.parametrize("name", ALL_FEWSHOT)
def test_fewshot_cache_and_base_new(tmp_path, name, capsys):
    make_tree(tmp_path, name)
    ds = build(tmp_path, name, shots=2, seed=3)
    out = capsys.readouterr().out
    cache = Path(ds.split_fewshot_dir) / "shot_2-seed_3.pkl"
    assert f"Saving preprocessed few-shot data to {cache}" in out
    assert out.count("Creating a 2-shot dataset") == 2  # train with K, val with min(K, 4)
    assert cache.is_file()
    assert len(ds.train_x) == 10 and len(ds.val) == 10 and len(ds.test) == 15
    picked = [it.impath for it in ds.train_x]

    again = build(tmp_path, name, shots=2, seed=3)
    assert f"Loading preprocessed few-shot data from {cache}" in capsys.readouterr().out
    assert [it.impath for it in again.train_x] == picked

    # base / new: first ceil(5/2)=3 labels, the other 2, relabelled from 0, on every split;
    # the cache written before subsampling serves both.
    base = build(tmp_path, name, shots=2, seed=3, subsample="base")
    new = build(tmp_path, name, shots=2, seed=3, subsample="new")
    out = capsys.readouterr().out
    assert "SUBSAMPLE BASE CLASSES!" in out and "SUBSAMPLE NEW CLASSES!" in out
    assert "Saving preprocessed" not in out
    assert base.classnames == ds.classnames[:3] and new.classnames == ds.classnames[3:]
    for sub, n in ((base, 3), (new, 2)):
        for items in (sub.train_x, sub.val, sub.test):
            assert sorted({it.label for it in items}) == list(range(n))
    assert [it.impath for it in base.train_x + new.train_x] == picked
    assert len(base.test) == 9 and len(new.test) == 6


def test_fewshot_matches_coop_sampling_and_seed(tmp_path):
    """Same seed -> the images CoOp's rule picks (random.sample per label, labels in
    first-appearance order, on the split file's order); another seed -> other images."""
    split = make_split_tree(tmp_path, "DescribableTextures", counts={"train": 6, "val": 5, "test": 1})
    ds = build(tmp_path, "DescribableTextures", shots=5, seed=7)

    random.seed(7)
    expected = []
    for key, k in (("train", 5), ("val", 4)):  # val: min(K, 4)
        groups = {}
        for rel, label, _ in split[key]:
            groups.setdefault(label, []).append(rel)
        picks = []
        for items in groups.values():
            picks += random.sample(items, k) if len(items) >= k else items
        expected.append(picks)
    prefix = str(tmp_path / "dtd" / "images") + os.sep
    assert [it.impath.replace(prefix, "") for it in ds.train_x] == expected[0]
    assert [it.impath.replace(prefix, "") for it in ds.val] == expected[1]

    other = build(tmp_path, "DescribableTextures", shots=5, seed=8)
    assert [it.impath for it in other.train_x] != [it.impath for it in ds.train_x]
    assert Path(ds.split_fewshot_dir, "shot_5-seed_8.pkl").is_file()


def test_short_class_warned_once_and_kept_whole(tmp_path, capsys):
    split = make_split_tree(tmp_path, "OxfordPets", counts={"train": 5, "val": 5, "test": 1})
    ds = build(tmp_path, "OxfordPets", shots=6, seed=1)
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "'abyssinian'" in line]
    assert len(warnings) == 1 and "6" in warnings[0], out  # train short, val (4 shots) not
    # Every class has 5 < 6 train images: all kept, in split-file order.
    prefix = tmp_path / "oxford_pets" / "images"
    assert [it.impath for it in ds.train_x] == [str(prefix / rel) for rel, _, _ in split["train"]]


# ---------------------------------------------------------------------------
# Building the split when the split file is absent
# ---------------------------------------------------------------------------


def _read_written_split(path):
    with open(path) as f:
        return json.load(f)


def test_pets_split_built_from_annotations(tmp_path, capsys):
    ds_dir = tmp_path / "oxford_pets"
    breeds = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("Bengal", 3, 1)]
    for fname, n in (("trainval.txt", 5), ("test.txt", 2)):
        lines = []
        for breed, cls, species in breeds:
            for i in range(n):
                name = f"{breed}_{fname[:2]}{i}"
                touch_jpeg(ds_dir / "images" / f"{name}.jpg")
                lines.append(f"{name} {cls} {species} 1\n")
        (ds_dir / "annotations").mkdir(exist_ok=True)
        (ds_dir / "annotations" / fname).write_text("".join(lines))
    ds = build(tmp_path, "OxfordPets")
    out = capsys.readouterr().out
    assert "split_zhou_OxfordPets.json not found; building a new random split" in out
    assert "Splitting trainval into 80% train and 20% val" in out
    assert f"Saved split to {ds_dir / 'split_zhou_OxfordPets.json'}" in out
    assert ds.classnames == ["abyssinian", "american_bulldog", "bengal"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (12, 3, 6)  # round(5*0.2)=1 val each
    split = _read_written_split(ds_dir / "split_zhou_OxfordPets.json")
    assert split["test"][0] == ["Abyssinian_te0.jpg", 0, "abyssinian"]
    # The written file is read back identically.
    again = build(tmp_path, "OxfordPets")
    assert "Reading split from" in capsys.readouterr().out
    assert [(d.impath, d.label) for d in again.train_x] == [(d.impath, d.label) for d in ds.train_x]


def test_cars_split_built_from_mat_files(tmp_path):
    ds_dir = tmp_path / "stanford_cars"
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi TT RS Coupe 2012"]
    cn = np.empty((1, 3), dtype=object)
    for i, n in enumerate(names):
        cn[0, i] = n
    (ds_dir / "devkit").mkdir(parents=True)
    savemat(ds_dir / "devkit" / "cars_meta.mat", {"class_names": cn})
    for folder, mat, n in (("cars_train", "devkit/cars_train_annos.mat", 5),
                           ("cars_test", "cars_test_annos_withlabels.mat", 2)):
        ann = np.zeros((1, 3 * n), dtype=[("bbox_x1", "O"), ("class", "O"), ("fname", "O")])
        for j in range(3 * n):
            fname = f"{j + 1:05d}.jpg"
            touch_jpeg(ds_dir / folder / fname)
            ann[0, j] = (np.array([[3]], dtype=np.uint8), np.array([[j % 3 + 1]], dtype=np.uint8),
                         np.array([fname]))
        savemat(ds_dir / mat, {"annotations": ann})
    ds = build(tmp_path, "StanfordCars")
    assert ds.classnames == ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Audi TT RS Coupe"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (12, 3, 6)
    split = _read_written_split(ds_dir / "split_zhou_StanfordCars.json")
    # As CoOp: StanfordCars paths are relative to the dataset folder.
    assert split["test"][0] == ["cars_test/00001.jpg", 0, "2000 AM General Hummer SUV"]
    assert all(p.startswith("cars_train/") for p, _, _ in split["train"] + split["val"])


def test_flowers_split_built_from_mat(tmp_path, capsys):
    ds_dir = tmp_path / "oxford_flowers"
    labels = [2, 1, 2, 1, 3] * 4  # 20 images; classes in first-appearance order 2, 1, 3
    for i in range(len(labels)):
        touch_jpeg(ds_dir / "jpg" / f"image_{i + 1:05d}.jpg")
    savemat(ds_dir / "imagelabels.mat", {"labels": np.array([labels])})
    (ds_dir / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose", "2": "sweet pea", "3": "rose"}))
    ds = build(tmp_path, "OxfordFlowers", seed=5)
    assert "Splitting data into 50% train, 20% val, and 30% test" in capsys.readouterr().out
    assert ds.classnames == ["pink primrose", "sweet pea", "rose"]  # label = mat label - 1
    # Class 2 (first seen) has 8 images: 4/2/2; class 3 has 4: 2/1/1.
    assert [d.label for d in ds.train_x] == [1] * 4 + [0] * 4 + [2] * 2
    random.seed(5)
    idx = [i for i, y in enumerate(labels) if y == 2]
    paths = [str(ds_dir / "jpg" / f"image_{i + 1:05d}.jpg") for i in idx]
    random.shuffle(paths)
    assert [d.impath for d in ds.train_x[:4]] == paths[:4]


def test_fgvc_reads_lists_and_names_with_spaces(tmp_path):
    make_fgvc_tree(tmp_path)
    ds = build(tmp_path, "FGVCAircraft")
    assert ds.lab2cname[3] == "BAE 146-200"
    assert not (tmp_path / "fgvc_aircraft" / "split_zhou_FGVCAircraft.json").exists()


def test_sun397_split_built_from_partition_files(tmp_path):
    ds_dir = tmp_path / "sun397"
    keys = ["a/abbey", "a/apartment_building/outdoor", "b/bakery/shop"]
    (ds_dir).mkdir()
    (ds_dir / "ClassName.txt").write_text("".join(f"/{k}\n" for k in keys))
    for fname, n in (("Training_01.txt", 5), ("Testing_01.txt", 2)):
        lines = []
        for k in keys:
            for i in range(n):
                rel = f"{k}/sun_{fname[:3]}{i}.jpg"
                touch_jpeg(ds_dir / "SUN397" / rel)
                lines.append(f"/{rel}\n")
        (ds_dir / fname).write_text("".join(lines))
    ds = build(tmp_path, "SUN397")
    assert ds.classnames == ["abbey", "outdoor apartment_building", "shop bakery"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (12, 3, 6)
    split = _read_written_split(ds_dir / "split_zhou_SUN397.json")
    assert split["test"][0] == ["a/abbey/sun_Tes0.jpg", 0, "abbey"]


def test_ucf101_split_built_from_lists(tmp_path):
    ds_dir = tmp_path / "ucf101"
    actions = ["ApplyEyeMakeup", "YoYo", "Archery"]
    lst = ds_dir / "ucfTrainTestlist"
    lst.mkdir(parents=True)
    (lst / "classInd.txt").write_text("".join(f"{i + 1} {a}\r\n" for i, a in enumerate(actions)))
    for fname, n, suffix in (("trainlist01.txt", 5, " 1"), ("testlist01.txt", 2, "")):
        lines = []
        for a in actions:
            renamed = "_".join(__import__("re").findall("[A-Z][^A-Z]*", a))
            for i in range(n):
                clip = f"v_{a}_g{fname[:2]}{i}_c01"
                touch_jpeg(ds_dir / "UCF-101-midframes" / renamed / f"{clip}.jpg")
                lines.append(f"{a}/{clip}.avi{suffix}\r\n")
        (lst / fname).write_text("".join(lines))
    ds = build(tmp_path, "UCF101")
    assert ds.classnames == ["Apply_Eye_Makeup", "Yo_Yo", "Archery"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (12, 3, 6)
    assert ds.test[0].impath == str(ds_dir / "UCF-101-midframes" / "Apply_Eye_Makeup" / "v_ApplyEyeMakeup_gte0_c01.jpg")


def _make_class_folders(image_dir, folders, n=10):
    for folder in folders:
        for i in range(n):
            touch_jpeg(Path(image_dir) / folder / f"{folder}_{i:03d}.jpg")


def test_folder_split_follows_listing_order(tmp_path, monkeypatch, capsys):
    """As CoOp: categories sorted, images in os.listdir order (not sorted), shuffled per class."""
    image_dir = tmp_path / "dtd" / "images"
    _make_class_folders(image_dir, ["banded", "Zigzag", "bubbly"])
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: sorted(real_listdir(p), reverse=True))
    ds = build(tmp_path, "DescribableTextures", seed=11)
    out = capsys.readouterr().out
    assert "Splitting into 50% train, 20% val, and 30% test" in out
    assert ds.classnames == ["Zigzag", "banded", "bubbly"]  # uppercase first

    random.seed(11)
    exp_train, exp_test = [], []
    for cat in ["Zigzag", "banded", "bubbly"]:
        imgs = [str(image_dir / cat / f) for f in sorted(real_listdir(image_dir / cat), reverse=True)]
        random.shuffle(imgs)
        exp_train += imgs[:5]
        exp_test += imgs[7:]
    assert [d.impath for d in ds.train_x] == exp_train
    assert [d.impath for d in ds.test] == exp_test
    split = _read_written_split(tmp_path / "dtd" / "split_zhou_DescribableTextures.json")
    assert split["train"][0][0] == os.path.relpath(exp_train[0], image_dir)


def test_caltech_and_eurosat_folder_rules(tmp_path):
    _make_class_folders(tmp_path / "caltech-101" / "101_ObjectCategories",
                        ["BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "airplanes", "ant"])
    ds = build(tmp_path, "Caltech101")
    assert ds.classnames == ["face", "leopard", "airplane", "ant"]

    _make_class_folders(tmp_path / "eurosat" / "2750", ["AnnualCrop", "SeaLake", "Forest"])
    ds = build(tmp_path, "EuroSAT")
    assert ds.classnames == ["Annual Crop Land", "Forest", "Sea or Lake"]

    _make_class_folders(tmp_path / "food-101" / "images", ["apple_pie", "baklava"])
    ds = build(tmp_path, "Food101")
    assert ds.classnames == ["apple_pie", "baklava"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (10, 4, 6)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def test_missing_dataset_folder_is_one_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        build(tmp_path, "OxfordPets")
    msg = str(info.value)
    assert str(tmp_path / "oxford_pets") in msg and "DATASETS.md" in msg
    assert "\n" not in msg
    assert not (tmp_path / "oxford_pets").exists()  # nothing created before the check


def test_missing_files_listed_together(tmp_path):
    (tmp_path / "oxford_pets").mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        build(tmp_path, "OxfordPets")
    msg = str(info.value)
    assert "images/" in msg and "split_zhou_OxfordPets.json" in msg
    assert "annotations/trainval.txt" in msg and "DATASETS.md" in msg

    (tmp_path / "fgvc_aircraft" / "images").mkdir(parents=True)
    (tmp_path / "fgvc_aircraft" / "variants.txt").write_text("A\n")
    with pytest.raises(DatasetNotFoundError) as info:
        build(tmp_path, "FGVCAircraft")
    msg = str(info.value)
    assert "images_variant_train.txt" in msg and "images_variant_test.txt" in msg
    assert "variants.txt," not in msg


def test_split_entry_with_missing_image_is_named(tmp_path):
    make_split_tree(tmp_path, "EuroSAT")
    gone = tmp_path / "eurosat" / "2750" / "Forest" / "Forest_0008.jpg"
    assert gone.is_file()
    gone.unlink()
    with pytest.raises(ImageNotFoundError) as info:
        build(tmp_path, "EuroSAT")
    assert str(gone) in str(info.value) and "split_zhou_EuroSAT.json" in str(info.value)


def test_list_entry_with_missing_image_is_named(tmp_path):
    make_fgvc_tree(tmp_path)
    gone = tmp_path / "fgvc_aircraft" / "images" / "1000003.jpg"
    gone.unlink()
    with pytest.raises(ImageNotFoundError, match="1000003.jpg"):
        build(tmp_path, "FGVCAircraft")


def test_bad_subsample_value(tmp_path):
    make_split_tree(tmp_path, "DescribableTextures")
    with pytest.raises(ValueError, match="SUBSAMPLE_CLASSES"):
        build(tmp_path, "DescribableTextures", subsample="novel")



def test_dataset_errors_are_user_errors(tmp_path):
    """train.py turns a UserError into one line on stderr (no traceback)."""
    from gopro_prompts.user_errors import UserError

    with pytest.raises(UserError):
        build(tmp_path, "ImageNetA")
    make_fgvc_tree(tmp_path)
    (tmp_path / "fgvc_aircraft" / "images_variant_val.txt").write_text("1000000 No Such Variant\n")
    with pytest.raises(UserError, match="No Such Variant"):
        build(tmp_path, "FGVCAircraft")
