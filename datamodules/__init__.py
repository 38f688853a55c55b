"""LightningDataModules, one task each. Data lives on the device as tensors (see `loaders`)."""
from datamodules.associative_recall import AssociativeRecall
from datamodules.batch import Batch, TaskSpec
from datamodules.byte_text import ByteText
from datamodules.digit_addition import ReversedDigitAddition
from datamodules.modular_arithmetic import ModularArithmetic

__all__ = ["AssociativeRecall", "Batch", "ByteText", "ModularArithmetic", "ReversedDigitAddition", "TaskSpec"]
