"""Lightning callbacks: grokking time, run safety (NaN guard, resumable checkpoints), progress, Grokfast, temperature annealing; the diagnostics
(gates, routing, fourier, curvature, optimizer_stats, weight_norms, attention, grokking_curves) are imported from
their own modules by the `callbacks` configs."""
from callbacks.finite_loss import FiniteLossGuard
from callbacks.grokking_time import GrokkingTime
from callbacks.progress import StepProgressBar
from callbacks.run_checkpoint import RunCheckpoint
from callbacks.temperature import TemperatureAnnealing
from runtime.errors import NonFiniteLossError

__all__ = ["FiniteLossGuard", "GrokkingTime", "NonFiniteLossError", "RunCheckpoint", "StepProgressBar", "TemperatureAnnealing"]
