"""CoOp's 15 benchmark datasets; importing this package registers them in
``DATASET_REGISTRY`` (CoOp's ``datasets/`` readers).  Layout: ``DATASETS.md``."""
if __name__ != "gopro_prompts.datasets":  # one module per file: never a second copy as `datasets`
    raise ImportError("this folder is the package gopro_prompts.datasets: import it under that name")

from . import (  # noqa: F401  (imported for registration)
    caltech101,
    dtd,
    eurosat,
    fgvc_aircraft,
    food101,
    imagenet,
    imagenet_a,
    imagenet_r,
    imagenet_sketch,
    imagenetv2,
    oxford_flowers,
    oxford_pets,
    stanford_cars,
    sun397,
    ucf101,
)
from . import synthetic  # noqa: F401  (the embedded offline dataset; added by the lead)
from . import synthetic_benchmarks  # noqa: F401  (synthetic base-to-new / cross-dataset / DG benchmarks)
from . import image_folder  # noqa: F401  (ImageFolder: the user's own images, DATASETS.md section ImageFolder)
