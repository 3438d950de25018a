"""Food-101 (as CoOp's ``datasets/food101.py``): 101 dishes, split ``split_zhou_Food101.json``."""
from gopro_prompts.registry import register_dataset

from .coop_common import CoOpFewShotDataset, read_and_split_data


@register_dataset
class Food101(CoOpFewShotDataset):
    """Images ``food-101/images/<dish>/``; without the split file, 50/20/30 per folder."""

    dataset_dir = "food-101"
    image_dir_name = "images"
    split_file = "split_zhou_Food101.json"

    def build_split(self):
        return read_and_split_data(self.image_dir)
