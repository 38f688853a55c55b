"""Modular arithmetic a ∘ b = c (mod p), one operation or several, in three input formats.

Formats (`format`):
- `onehot`:   [onehot(a); onehot(b)] (2p dims, plus a one-hot of the operation when there are several) -> c.
- `tokens`:   [a, OP, b, =] -> c, predicted at the last position; with `op_token: false`, [a, b, =] -> c
  (Nanda et al. 2023's input: one operation, vocabulary residues and =).
- `sequence`: [BOS, a, OP, b, EQ, c, EOS, EOS] as next-token prediction (7 positions); the loss is on the
  answer position only (`loss_on: answer`) or on all 7 (`loss_on: all`). Accuracy is always on the answer.

Token ids: 0..p-1 residues, then one id per operation, then EQ, BOS, EOS; without the op token, residues and EQ.
Seeds: `split_seed` fixes which pairs are train/val/test; `shuffle_seed` the mini-batch order. Model init has
its own seed (the top-level `seed`), so paired runs can share a split and differ in init, or the reverse.
"""
from __future__ import annotations

import math
import os

import torch

from core.errors import require
from datamodules.batch import FORMATS, Batch, TaskSpec
from datamodules.in_memory import InMemoryTask
from datamodules.loaders import take
from datamodules.loss_bounds import loss_bounds
from datamodules.operations import OPERATIONS, is_prime
from datamodules.splits import check_fractions
from datamodules.task import ModularStructure

ANSWER_POSITION_IN_SEQUENCE = 4  # targets = [a, OP, b, EQ, c, EOS, EOS]; c sits at index 4
MEMORY_SHARE = 0.5  # data that would take more than this share of the machine's memory are refused up front


class ModularArithmetic(InMemoryTask):
    def __init__(
        self,
        p: int = 97,
        operations: list[str] | tuple[str, ...] = ("add",),
        format: str = "onehot",
        train_fraction: float = 0.5,
        val_fraction: float | None = None,
        test_fraction: float = 0.0,
        loss_on: str = "answer",
        op_token: bool = True,
        batch_size: int = -1,
        eval_batch_size: int = -1,
        split_seed: int = 0,
        shuffle_seed: int = 0,
    ):
        super().__init__()
        operations = [operations] if isinstance(operations, str) else list(operations)
        self._validate(p, operations, format, train_fraction, val_fraction, test_fraction, loss_on, op_token,
                       batch_size, eval_batch_size)
        self.p, self.operations, self.format, self.loss_on = p, operations, format, loss_on
        self.op_token = op_token
        self.batch_size, self.eval_batch_size, self.shuffle_seed = batch_size, eval_batch_size, shuffle_seed
        self._check_fits_in_memory()

        a, b, c, op = self._equations()
        self.all = self._encode(a, b, c, op)
        n = len(c)
        n_train = math.floor(train_fraction * n)
        n_test = math.floor(test_fraction * n)
        n_val = n - n_train - n_test if val_fraction is None else math.floor(val_fraction * n)
        require(n_train > 0 and n_val > 0, "train_fraction", train_fraction,
                f"fractions that leave at least one train and one val example out of {n}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
        self.indices = {
            "train": order[:n_train],
            "val": order[n_train : n_train + n_val],
            "test": order[n_train + n_val : n_train + n_val + n_test],
        }
        self.splits = {name: take(self.all, idx) for name, idx in self.indices.items()}

    @staticmethod
    def _validate(p, operations, format, train_fraction, val_fraction, test_fraction, loss_on, op_token,
                  batch_size, eval_batch_size) -> None:
        require(isinstance(p, int) and not isinstance(p, bool) and p >= 2, "p", p, "an integer >= 2")
        require(len(operations) >= 1, "operations", operations, f"a non-empty list of {', '.join(OPERATIONS)}")
        for name in operations:
            require(name in OPERATIONS, "operations", name, f"one of {', '.join(OPERATIONS)}")
            require(not OPERATIONS[name].needs_prime or is_prime(p), "p", p, f"a prime for operation '{name}'")
        require(len(set(operations)) == len(operations), "operations", operations, "no repeated operation")
        require(format in FORMATS, "format", format, f"one of {', '.join(FORMATS)}")
        require(loss_on in ("answer", "all"), "loss_on", loss_on, "answer, all")
        require(loss_on == "answer" or format == "sequence", "loss_on", loss_on,
                "'answer' unless format=sequence (other formats only have the answer)")
        require(isinstance(op_token, bool), "op_token", op_token, "true or false")
        require(op_token or len(operations) == 1, "op_token", op_token,
                f"true with several operations (the input must say which applies: {', '.join(operations)})")
        require(op_token or format != "sequence", "op_token", op_token,
                "true for format=sequence (only the tokens format has a variant without it)")
        check_fractions(train_fraction, val_fraction, test_fraction)
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            require(isinstance(value, int) and not isinstance(value, bool) and (value == -1 or value > 0), key,
                    value, "-1 (full batch) or a positive integer")

    def n_examples(self, operations: list[str] | None = None) -> int:
        """How many equations `operations` (default: all of this task's) have: p^2 each, p(p-1) without b = 0."""
        return sum(self.p * (self.p - 1 if OPERATIONS[name].nonzero_b else self.p)
                   for name in operations or self.operations)

    def estimated_bytes(self) -> int:
        """Bytes of the tensors this datamodule comes to hold, from the encoding of one example: the full table
        (`all`), its train/val/test copies (`splits`) and one copy of the first operation's (a, b) grid (`grid()`,
        for the spectral penalty and diagnostics)."""
        one = self._encode(*(torch.zeros(1, dtype=torch.long) for _ in range(4)))
        per_example = sum(t.nbytes for t in one)
        return per_example * (2 * self.n_examples() + self.n_examples(self.operations[:1]))

    def _check_fits_in_memory(self) -> None:
        """Refuse a size whose data cannot fit, before allocating any of it (p = 100003 would take petabytes)."""
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # no such query on this system: nothing to compare with
            return
        need, limit = self.estimated_bytes(), MEMORY_SHARE * memory
        require(need <= limit, "p", self.p,
                f"a size whose data fit in memory ({self.n_examples():,} examples need ~{readable_bytes(need)}; "
                f"limit {readable_bytes(limit)} = {MEMORY_SHARE:.0%} of this machine's {readable_bytes(memory)})")

    def _equations(self):
        """Every (a, b, c, op index) of every operation, b = 0 left out where the operation needs it."""
        p = self.p
        a, b = (t.flatten() for t in torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij"))
        parts = []
        for i, name in enumerate(self.operations):
            op = OPERATIONS[name]
            keep = b != 0 if op.nonzero_b else torch.ones_like(b, dtype=torch.bool)
            aa, bb = a[keep], b[keep]
            parts.append((aa, bb, op.apply(aa, bb, p), torch.full_like(aa, i)))
        return (torch.cat(cols) for cols in zip(*parts))

    @property
    def n_ops(self) -> int:
        return len(self.operations)

    def token_ids(self) -> dict[str, int]:
        """Ids of the non-residue tokens. Without the op token only EQ (= p) is left, as in Nanda et al.'s
        vocabulary of p + 1, since the tokens format uses no BOS or EOS."""
        if not self.op_token:
            return {"EQ": self.p}
        ids = {f"op:{name}": self.p + i for i, name in enumerate(self.operations)}
        base = self.p + self.n_ops
        return {**ids, "EQ": base, "BOS": base + 1, "EOS": base + 2}

    @property
    def operand_columns(self) -> tuple[int, int]:
        """Where a and b sit in a token input row (tokens and sequence formats)."""
        first = 1 if self.format == "sequence" else 0
        return first, first + (2 if self.op_token else 1)

    def _encode(self, a, b, c, op) -> Batch:
        p, n = self.p, len(c)
        ids = self.token_ids()
        op_ids = p + op
        eq = torch.full((n,), ids["EQ"])
        if self.format == "onehot":  # written straight into floats: no int64 one-hots 2-4 times larger on the way
            inputs = torch.zeros(n, 2 * p + (self.n_ops if self.n_ops > 1 else 0))
            rows = torch.arange(n)
            inputs[rows, a] = 1
            inputs[rows, p + b] = 1
            if self.n_ops > 1:
                inputs[rows, 2 * p + op] = 1
            return Batch(inputs, c[:, None], torch.ones(n, 1), torch.ones(n, 1, dtype=torch.bool), op)
        if self.format == "tokens":
            columns = [a, op_ids, b, eq] if self.op_token else [a, b, eq]
            return Batch(torch.stack(columns, dim=1), c[:, None], torch.ones(n, 1), torch.ones(n, 1, dtype=torch.bool),
                         op)
        bos, eos = torch.full((n,), ids["BOS"]), torch.full((n,), ids["EOS"])
        seq = torch.stack([bos, a, op_ids, b, eq, c, eos, eos], dim=1)
        answer = torch.zeros(n, 7, dtype=torch.bool)
        answer[:, ANSWER_POSITION_IN_SEQUENCE] = True
        mask = torch.ones(n, 7) if self.loss_on == "all" else answer.float()
        return Batch(seq[:, :-1], seq[:, 1:], mask, answer, op)

    @property
    def spec(self) -> TaskSpec:
        vocab = self.p + len(self.token_ids())
        if self.format == "onehot":
            return TaskSpec(num_classes=self.p, in_features=self.all.inputs.shape[1], input_kind="onehot",
                            group_names=tuple(self.operations))
        if self.format == "tokens":
            return TaskSpec(num_classes=self.p, vocab_size=vocab, seq_len=self.all.inputs.shape[1],
                            group_names=tuple(self.operations))
        return TaskSpec(num_classes=vocab, vocab_size=vocab, seq_len=7, group_names=tuple(self.operations))

    def grid(self) -> Batch:
        """Every (a, b) of the first operation in a-major order, a (p*p) grid when b = 0 is allowed
        (for diagnostics and penalties that read the net's output as a function on Z_p x Z_p)."""
        keep = self.all.group == 0
        return Batch(*(t[keep] for t in self.all))

    def modular_structure(self) -> ModularStructure:
        """Z_p, the operations and the (a, b) grid, for the diagnostics and penalties that need them."""
        return ModularStructure(p=self.p, operations=tuple(self.operations), format=self.format,
                                operand_columns=None if self.format == "onehot" else self.operand_columns,
                                all=self.all, grid=self.grid())

    def loss_bounds(self) -> dict[str, float]:
        """Reference losses of this task (the conditions-for-grokking study): a perfectly generalising model's and a random answer's."""
        bounds = loss_bounds(self.p, self.format, self.loss_on, tuple(self.operations))
        return {"generalising": bounds.generalising, "random answer": bounds.random_answer}


def readable_bytes(n: float) -> str:
    """1234567890 -> '1.2 GB' (decimal units, up to PB)."""
    units = ["bytes", "kB", "MB", "GB", "TB", "PB"]
    while n >= 1000 and len(units) > 1:
        n, units = n / 1000, units[1:]
    return f"{n:,.1f} {units[0]}"
