"""Describable Textures (as CoOp's ``datasets/dtd.py``): 47 textures, split
``split_zhou_DescribableTextures.json``."""
from gopro_prompts.registry import register_dataset

from .coop_common import CoOpFewShotDataset, read_and_split_data


@register_dataset
class DescribableTextures(CoOpFewShotDataset):
    """Images ``dtd/images/<texture>/``; without the split file, 50/20/30 per folder."""

    dataset_dir = "dtd"
    image_dir_name = "images"
    split_file = "split_zhou_DescribableTextures.json"

    def build_split(self):
        return read_and_split_data(self.image_dir)
