"""ImageNet-A (``dassl-behaviour.md`` §h.7): test only, its 200 classes named by folder wnid."""
from gopro_prompts.dassl_compat import DATASET_REGISTRY

from .imagenet_variants import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetVariant):
    """``imagenet-adversarial/imagenet-a/<wnid>/`` + ``classnames.txt`` (labels 0..199)."""

    dataset_dir = "imagenet-adversarial"
    image_dir_name = "imagenet-a"

    def read_data(self, classnames):
        return self.read_wnid_folders(classnames, ignored=("README.txt",))
