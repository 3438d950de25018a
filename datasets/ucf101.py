"""UCF101 mid-frames (as CoOp's ``datasets/ucf101.py``): 101 actions, split ``split_zhou_UCF101.json``."""
import os.path as osp
import re

from gopro_prompts.registry import register_dataset

from .coop_common import CoOpFewShotDataset, DatasetError, new_datum, split_trainval


@register_dataset
class UCF101(CoOpFewShotDataset):
    """Images ``ucf101/UCF-101-midframes/<Split_Action>/<clip>.jpg``; without the split
    file, built from ``ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt``."""

    dataset_dir = "ucf101"
    image_dir_name = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    source_files = (
        "ucfTrainTestlist/classInd.txt",
        "ucfTrainTestlist/trainlist01.txt",
        "ucfTrainTestlist/testlist01.txt",
    )

    def build_split(self):
        cname2lab = {}
        with open(osp.join(self.dataset_dir, "ucfTrainTestlist", "classInd.txt"), "r") as f:
            for line in f:
                label, classname = line.strip().split(" ")
                cname2lab[classname] = int(label) - 1
        trainval = self.read_data(cname2lab, "trainlist01.txt")
        test = self.read_data(cname2lab, "testlist01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, cname2lab, list_file):
        """Lines ``ApplyEyeMakeup/v_..._g08_c01.avi [label]``; the action is split into
        capitalised chunks joined by ``_`` (``Apply_Eye_Makeup``, ``Yo_Yo``)."""
        filepath = osp.join(self.dataset_dir, "ucfTrainTestlist", list_file)
        items = []
        with open(filepath, "r") as f:
            for line in f:
                action, filename = line.strip().split(" ")[0].split("/")
                if action not in cname2lab:
                    raise DatasetError(
                        f"{filepath}: action {action!r} is not listed in classInd.txt; "
                        f"the list files do not belong together"
                    )
                renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))
                impath = osp.join(self.image_dir, renamed, filename.replace(".avi", ".jpg"))
                items.append(new_datum(impath, cname2lab[action], renamed, filepath))
        return items
