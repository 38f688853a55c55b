"""Binary operations on Z_p: the label of each (a, b) pair, and which pairs and moduli each one allows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def _inverse(b: Tensor, p: int) -> Tensor:
    """Multiplicative inverse mod prime p by Fermat's little theorem (b^(p-2))."""
    table = torch.tensor([pow(int(v), p - 2, p) if v else 0 for v in range(p)])
    return table[b]


@dataclass(frozen=True)
class Operation:
    name: str
    symbol: str
    apply: Callable[[Tensor, Tensor, int], Tensor]
    needs_prime: bool = False  # the result is only defined (or only a group operation) for prime p
    nonzero_b: bool = False  # pairs with b = 0 are left out


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in [
        Operation("add", "+", lambda a, b, p: (a + b) % p),
        Operation("sub", "-", lambda a, b, p: (a - b) % p),
        Operation("mul", "*", lambda a, b, p: (a * b) % p),
        Operation("div", "/", lambda a, b, p: (a * _inverse(b, p)) % p, needs_prime=True, nonzero_b=True),
        Operation("sum_of_squares", "a^2+b^2", lambda a, b, p: (a * a + b * b) % p),
    ]
}
