"""Trainers: importing this package registers every trainer and its config node."""
from trainers import zsclip, coop, cocoop, maple, gopro  # noqa: F401
