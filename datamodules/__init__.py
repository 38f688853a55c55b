"""LightningDataModules, one task each. Data lives on the device as tensors (see `loaders`)."""
from datamodules.batch import Batch, TaskSpec
from datamodules.digit_addition import ReversedDigitAddition
from datamodules.modular_arithmetic import ModularArithmetic

__all__ = ["Batch", "ModularArithmetic", "ReversedDigitAddition", "TaskSpec"]
