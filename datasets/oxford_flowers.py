"""Oxford Flowers 102 (as CoOp's ``datasets/oxford_flowers.py``): split ``split_zhou_OxfordFlowers.json``."""
import os.path as osp
import random
from collections import OrderedDict

from gopro_prompts.dassl_compat import read_json
from gopro_prompts.registry import register_dataset
from scipy.io import loadmat

from .coop_common import CoOpFewShotDataset, DatasetError, new_datum


@register_dataset
class OxfordFlowers(CoOpFewShotDataset):
    """Images ``oxford_flowers/jpg/image_XXXXX.jpg``; without the split file, built
    from ``imagelabels.mat`` and ``cat_to_name.json`` (50/20/30 per class)."""

    dataset_dir = "oxford_flowers"
    image_dir_name = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    source_files = ("imagelabels.mat", "cat_to_name.json")

    def build_split(self, p_trn=0.5, p_val=0.2):
        label_file = osp.join(self.dataset_dir, "imagelabels.mat")
        labels = loadmat(label_file)["labels"][0]
        lab2cname = read_json(osp.join(self.dataset_dir, "cat_to_name.json"))
        # Image i (0-based) is image_{i+1:05d}.jpg; group by 1-based label in
        # first-appearance order.
        tracker = OrderedDict()
        for i, label in enumerate(labels):
            impath = osp.join(self.image_dir, f"image_{i + 1:05d}.jpg")
            tracker.setdefault(int(label), []).append(impath)

        p_tst = 1 - p_trn - p_val
        print(f"Splitting data into {p_trn:.0%} train, {p_val:.0%} val, and {p_tst:.0%} test")
        train, val, test = [], [], []
        for label, impaths in tracker.items():
            random.shuffle(impaths)
            n_total = len(impaths)
            n_train = round(n_total * p_trn)
            n_val = round(n_total * p_val)
            n_test = n_total - n_train - n_val
            if not (n_train > 0 and n_val > 0 and n_test > 0):
                raise DatasetError(
                    f"Cannot split OxfordFlowers class {label}: {n_total} image(s) give "
                    f"{n_train}/{n_val}/{n_test} train/val/test; use the official split file"
                )
            cname = lab2cname[str(label)]

            def collate(paths, y=label - 1, c=cname):
                return [new_datum(p, y, c, label_file) for p in paths]

            train.extend(collate(impaths[:n_train]))
            val.extend(collate(impaths[n_train:n_train + n_val]))
            test.extend(collate(impaths[n_train + n_val:]))
        return train, val, test
