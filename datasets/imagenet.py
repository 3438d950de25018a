"""ImageNet (ILSVRC-2012) as CoOp reads it (CoOp's ``datasets/imagenet.py``).

The val images are the test set (and the val set); the lists of both are kept
in ``imagenet/preprocessed.pkl``, whose order decides which images few-shot
sampling picks, so the file is reused whenever it exists.
"""
import os
import os.path as osp

from gopro_prompts.dassl_compat import DatasetBase, listdir_nohidden
from gopro_prompts.registry import register_dataset

from .coop_common import (
    CacheError,
    DATASETS_DOC,
    DatasetError,
    DatasetNotFoundError,
    ImageNotFoundError,
    check_layout,
    dataset_root,
    fewshot_cache_path,
    get_subsample,
    check_images_readable,
    load_fewshot_cache,
    make_fewshot_dir,
    new_datum,
    read_classnames,
    sample_fewshot,
    subsample_classes,
)
from .datum_pickle import load_datum_pickle, save_datum_pickle


@register_dataset
class ImageNet(DatasetBase):
    """``imagenet/images/{train,val}/<wnid>/`` + ``classnames.txt``; 1000 classes."""

    dataset_dir = "imagenet"

    def __init__(self, cfg):
        root = dataset_root(cfg)
        self.dataset_dir = osp.join(root, type(self).dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, "images")
        self.preprocessed = osp.join(self.dataset_dir, "preprocessed.pkl")
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")
        subsample = get_subsample(cfg)
        check_layout(
            "ImageNet", cfg, self.dataset_dir, [],
            [("preprocessed.pkl", ("classnames.txt", "images/train/", "images/val/"))],
        )
        make_fewshot_dir(self.dataset_dir)

        if osp.exists(self.preprocessed):
            train, test = self.load_preprocessed()
        else:
            classnames = read_classnames(osp.join(self.dataset_dir, "classnames.txt"))
            train = self.read_data(classnames, "train")
            test = self.read_data(classnames, "val")
            save_datum_pickle({"train": train, "test": test}, self.preprocessed)

        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1:
            path = fewshot_cache_path(self.split_fewshot_dir, num_shots, cfg.SEED)
            if osp.exists(path):
                print(f"Loading preprocessed few-shot data from {path}")
                train = load_fewshot_cache(path, ("train",))["train"]
            else:
                # As CoOp: ImageNet has no few-shot val; the cache holds train only.
                train = sample_fewshot(self, train, num_shots, "train")
                print(f"Saving preprocessed few-shot data to {path}")
                save_datum_pickle({"train": train}, path)

        train, test = subsample_classes(train, test, subsample=subsample)
        check_images_readable({"train": train, "test": test}, type(self).__name__)
        # As CoOp: val is the test list itself (best_val selects on the test set).
        super().__init__(train_x=train, val=test, test=test)

    def load_preprocessed(self):
        """Read ``preprocessed.pkl`` (written by CoOp / MaPLe or by us)."""
        data = load_datum_pickle(self.preprocessed)
        if not isinstance(data, dict) or any(
            not isinstance(data.get(k), list) for k in ("train", "test")
        ):
            raise CacheError(
                f"{self.preprocessed} is not a dict with 'train' and 'test' lists; delete it "
                f"to rebuild it from images/ (few-shot picks may then differ)"
            )
        # Deliberate fix: the file stores absolute paths; spot-check one
        # image per list instead of failing later inside a loader worker.
        for key in ("train", "test"):
            if data[key] and not osp.isfile(data[key][0].impath):
                raise ImageNotFoundError(
                    f"{self.preprocessed} lists images that do not exist (e.g. "
                    f"{data[key][0].impath}): it was written for another DATASET.ROOT or "
                    f"the data moved; restore the data there or delete the file to rebuild it "
                    f"(few-shot picks may then differ)"
                )
        return data["train"], data["test"]

    def read_data(self, classnames, split_dir):
        """Class folders = sorted sub-directories (label = index); images in
        ``listdir_nohidden`` order (filesystem order, as in CoOp)."""
        split_dir = osp.join(self.image_dir, split_dir)
        folders = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
        if not folders:
            raise DatasetNotFoundError(
                f"Dataset ImageNet: {split_dir} has no class sub-folders; arrange the images "
                f"into one folder per class (wnid), see {DATASETS_DOC} (section ImageNet)"
            )
        items = []
        for label, folder in enumerate(folders):
            if folder not in classnames:
                raise DatasetError(
                    f"Dataset ImageNet: folder {osp.join(split_dir, folder)} has no entry in "
                    f"{osp.join(self.dataset_dir, 'classnames.txt')}"
                )
            classname = classnames[folder]
            folder_dir = osp.join(split_dir, folder)
            for imname in listdir_nohidden(folder_dir):
                items.append(new_datum(osp.join(folder_dir, imname), label, classname, folder_dir))
        return items
