"""ImageNet-Sketch (as CoOp's ``datasets/imagenet_sketch.py``): test only, 1000 classes."""
from gopro_prompts.registry import register_dataset

from .imagenet_variants import ImageNetVariant


@register_dataset
class ImageNetSketch(ImageNetVariant):
    """``imagenet-sketch/images/<wnid>/`` + ``classnames.txt``."""

    dataset_dir = "imagenet-sketch"
    image_dir_name = "images"

    def read_data(self, classnames):
        return self.read_wnid_folders(classnames)
