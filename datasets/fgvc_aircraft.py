"""FGVC-Aircraft (as CoOp reads it): 100 variants, always read from the official lists."""
import os.path as osp

from gopro_prompts.registry import register_dataset

from .coop_common import CoOpFewShotDataset, DatasetError, new_datum


@register_dataset
class FGVCAircraft(CoOpFewShotDataset):
    """Classes = lines of ``variants.txt`` (label = line index); splits from
    ``images_variant_{train,val,test}.txt`` (no JSON split file)."""

    dataset_dir = "fgvc_aircraft"
    image_dir_name = "images"
    split_file = None
    source_files = (
        "variants.txt",
        "images_variant_train.txt",
        "images_variant_val.txt",
        "images_variant_test.txt",
    )

    def build_split(self):
        classnames = []
        with open(osp.join(self.dataset_dir, "variants.txt"), "r") as f:
            for line in f:
                classnames.append(line.strip())
        cname2lab = {c: i for i, c in enumerate(classnames)}
        train = self.read_data(cname2lab, "images_variant_train.txt")
        val = self.read_data(cname2lab, "images_variant_val.txt")
        test = self.read_data(cname2lab, "images_variant_test.txt")
        return train, val, test

    def read_data(self, cname2lab, split_file):
        """Lines ``<image id> <variant words...>``: image ``images/<id>.jpg``."""
        filepath = osp.join(self.dataset_dir, split_file)
        items = []
        with open(filepath, "r") as f:
            for line in f:
                tokens = line.strip().split(" ")
                classname = " ".join(tokens[1:])
                if classname not in cname2lab:
                    raise DatasetError(
                        f"{filepath}: variant {classname!r} (image {tokens[0]}) is not listed in "
                        f"variants.txt; the annotation files do not belong together"
                    )
                impath = osp.join(self.image_dir, tokens[0] + ".jpg")
                items.append(new_datum(impath, cname2lab[classname], classname, filepath))
        return items
