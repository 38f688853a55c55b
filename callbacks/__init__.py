"""Lightning callbacks: grokking time, run safety, progress (diagnostics follow in their own modules)."""
from callbacks.finite_loss import FiniteLossGuard, NonFiniteLossError
from callbacks.grokking_time import GrokkingTime
from callbacks.progress import StepProgressBar
from callbacks.temperature import TemperatureAnnealing

__all__ = ["FiniteLossGuard", "GrokkingTime", "NonFiniteLossError", "StepProgressBar", "TemperatureAnnealing"]
