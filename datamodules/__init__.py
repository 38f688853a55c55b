"""LightningDataModules, one task each. Data lives on the device as tensors (see `loaders`), or for language
modelling on large corpora in memory-mapped token files (see `token_files`)."""
from datamodules.associative_recall import AssociativeRecall
from datamodules.batch import Batch, TaskSpec
from datamodules.byte_text import ByteText
from datamodules.digit_addition import ReversedDigitAddition
from datamodules.modular_arithmetic import ModularArithmetic
from datamodules.token_text import TokenText

__all__ = ["AssociativeRecall", "Batch", "ByteText", "ModularArithmetic", "ReversedDigitAddition", "TaskSpec",
           "TokenText"]
