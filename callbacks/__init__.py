"""Lightning callbacks in three kinds, each a subpackage:

run/            what every run has: resumable checkpoints and stop requests, the NaN guard, grokking time and its
                stop rule, the progress line, tokens/s
interventions/  what changes training: Grokfast's gradient filter, temperature annealing
diagnostics/    what measures it and draws it (gates, routing, Fourier spectra, curvature, optimiser statistics,
                weight norms, attention, grokking curves, digit circuits), with the analysis maths beside them
"""
from callbacks.interventions.temperature import TemperatureAnnealing
from callbacks.run.checkpoint import RunCheckpoint
from callbacks.run.finite_loss import FiniteLossGuard
from callbacks.run.grokking_time import GrokkingTime
from callbacks.run.progress import StepProgressBar

__all__ = ["FiniteLossGuard", "GrokkingTime", "RunCheckpoint", "StepProgressBar", "TemperatureAnnealing"]
