"""LightningModules and what they step with: `task_module` (a solo run), `ensemble_module` (E members under one
vmapped step, over `stacked` nets and `stacked_adamw`), the task loss and metrics (`answers`, `decoding`), the
optimiser recipe (`optimization`, `param_groups`) and the captured CUDA-graph step (`cuda_graph`)."""
from lightning_modules.optimization import AdamWRecipe
from lightning_modules.param_groups import DecayPolicy
from lightning_modules.task_module import TaskModule

__all__ = ["AdamWRecipe", "DecayPolicy", "TaskModule"]
