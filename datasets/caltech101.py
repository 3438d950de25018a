"""Caltech-101 (as CoOp reads it): 100 object classes, split ``split_zhou_Caltech101.json``."""
from gopro_prompts.registry import register_dataset

from .coop_common import CoOpFewShotDataset, read_and_split_data

#: Folders that are not classes.
IGNORED = ["BACKGROUND_Google", "Faces_easy"]
#: Renames applied when the split is generated.
NEW_CNAMES = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}


@register_dataset
class Caltech101(CoOpFewShotDataset):
    """Images ``caltech-101/101_ObjectCategories/<class>/``; without the split file,
    50/20/30 per folder (``BACKGROUND_Google`` and ``Faces_easy`` ignored)."""

    dataset_dir = "caltech-101"
    image_dir_name = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"

    def build_split(self):
        return read_and_split_data(self.image_dir, ignored=IGNORED, new_cnames=NEW_CNAMES)
