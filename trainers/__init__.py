"""Trainers: importing this package registers every trainer and its config node."""
if __name__ != "gopro_prompts.trainers":  # one module per file: never a second copy as `trainers`
    raise ImportError("this folder is the package gopro_prompts.trainers: import it under that name")

from gopro_prompts.trainers import zsclip, coop, cocoop, maple, gopro  # noqa: F401
from gopro_prompts.trainers import kgcoop  # noqa: F401
from gopro_prompts.trainers import prograd  # noqa: F401
from gopro_prompts.trainers import promptsrc  # noqa: F401
from gopro_prompts.trainers import ivlp, vpt  # noqa: F401
