"""Terms added to the task loss, each `weight * term(net output)`: base (the Regularizer contract), routing
(entropy, sparsity, gini, load balance over routers), moe (Switch balance, router z-loss), compute_cost (the
least-action study's gate costs), spectral (mean squared frequency of the output over Z_p x Z_p)."""
from regularizers.base import Regularizer

__all__ = ["Regularizer"]
