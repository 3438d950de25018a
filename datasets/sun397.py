"""SUN397 (as CoOp's ``datasets/sun397.py``): 397 scene classes, split ``split_zhou_SUN397.json``."""
import os.path as osp

from gopro_prompts.registry import register_dataset

from .coop_common import CoOpFewShotDataset, DatasetError, new_datum, split_trainval


@register_dataset
class SUN397(CoOpFewShotDataset):
    """Images in ``sun397/SUN397``; without the split file, built from
    ``ClassName.txt``, ``Training_01.txt`` (80/20 train/val) and ``Testing_01.txt``."""

    dataset_dir = "sun397"
    image_dir_name = "SUN397"
    split_file = "split_zhou_SUN397.json"
    source_files = ("ClassName.txt", "Training_01.txt", "Testing_01.txt")

    def build_split(self):
        classnames = []
        with open(osp.join(self.dataset_dir, "ClassName.txt"), "r") as f:
            for line in f:
                classnames.append(line.strip()[1:])  # drop the leading "/"
        cname2lab = {c: i for i, c in enumerate(classnames)}
        trainval = self.read_data(cname2lab, "Training_01.txt")
        test = self.read_data(cname2lab, "Testing_01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, cname2lab, text_file):
        """Lines ``/a/abbey/sun_x.jpg``; display name drops the letter and reverses the rest:
        ``a/apartment_building/outdoor`` -> ``outdoor apartment_building``."""
        filepath = osp.join(self.dataset_dir, text_file)
        items = []
        with open(filepath, "r") as f:
            for line in f:
                imname = line.strip()[1:]  # drop the leading "/"
                key = osp.dirname(imname)
                if key not in cname2lab:
                    raise DatasetError(
                        f"{filepath}: class folder {key!r} is not listed in ClassName.txt; "
                        f"the partition files do not belong together"
                    )
                classname = " ".join(key.split("/")[1:][::-1])
                impath = osp.join(self.image_dir, imname)
                items.append(new_datum(impath, cname2lab[key], classname, filepath))
        return items
