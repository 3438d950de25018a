"""Train / evaluate a CLIP prompt-learning method: the CoOp / CoCoOp / MaPLe command line.

    python train.py --root DATA --trainer GOPro \
        --dataset-config-file configs/datasets/oxford_pets.yaml \
        --config-file configs/trainers/GOPro/vit_b16.yaml \
        --output-dir output/... DATASET.NUM_SHOTS 16

The code lives in ``gopro_prompts/train.py`` (installed: ``python -m gopro_prompts.train``
or the ``gopro-train`` command); this file runs it from a clone without installing.
"""
import sys

from gopro_prompts.train import cli

if __name__ == "__main__":
    sys.exit(cli())
