"""Add a one-digit constant k to an n-digit number written least-significant digit first (the task of the
MoE-expressivity study).

Encoding (n = 3, k = 7, 593 + 7 = 600): the number's digits units first, SEP, the n + 1 digits of the sum units
first, EOS; numbers below 10^(n-1) keep their leading zeros (7 -> `7 0 0`).

    sequence  3 9 5 SEP 0 0 6 0 EOS                  (length 2n + 3; ids: digits 0-9, SEP = 10, EOS = 11)
    inputs    3 9 5 SEP 0 0 6 0                      (sequence[:-1], T = 2n + 2)
    targets   9 5 SEP 0 0 6 0 EOS                    (sequence[1:]: target j is predicted from inputs <= j)
    loss_mask 0 0 0   1 1 1 1 1                      (target positions n .. 2n + 1: the sum's digits and EOS)
    answer    F F F   T T T T F                      (target positions n .. 2n: the n + 1 digits of the sum)

Carries (k <= 9, so at most one carry enters each digit): a carry enters digit i >= 1 when the sum of the lower
i digits overflows, (x mod 10^i) + k >= 10^i. The carry-chain length (`Batch.group`, named `carry_<L>`) is the
number of output digits a carry enters, 0..n: 593 + 7 -> 2 (3+7 and 9+1 overflow, 5+1 does not), 123 + 7 -> 1,
120 + 7 -> 0, 999 + 7 -> 3 (the carry makes the top digit o_n = 1).
Digit tags (`digit_operations`, (N, n + 1), names `DIGIT_OPERATIONS`): what each output digit does to the input
digit (0 above the number): `+k` on o_0, `+1` where a carry enters, `+0` elsewhere (593 + 7: +k, +1, +1, +0).

Splits are by number (each number sits in one split), at random with `split_seed`. The numbers are every one of
0..10^n - 1 (while 10^n <= MAX_EXAMPLES), or `sample_size` distinct ones drawn with `split_seed`.
`holdout_carry_chains: L` puts every number whose carry chain is >= L in `test` (and no other number), to measure
generalisation to longer chains than seen in training; the fractions then split the remaining numbers.
`sample_fresh: true` trains on fresh numbers each step, drawn uniformly from all 10^n numbers that are not in val
or test (nor held-out chains), batch k a pure function of (shuffle_seed, k); the `train` split is then a fixed
sample of training numbers, for train metrics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from core.errors import require
from datamodules.batch import Batch, TaskSpec
from datamodules.in_memory import InMemoryTask
from datamodules.loaders import shard, take, to_device
from datamodules.splits import check_fractions

SEP, EOS = 10, 11
VOCAB_SIZE = 12
DIGIT_OPERATIONS = ("+k", "+1", "+0")  # ids 0, 1, 2 in `digit_operations`
MAX_EXAMPLES = 1_000_000  # numbers held as a data set: all 10^n up to this, else `sample_size` (at most this)
MAX_DIGITS = 18  # the sum of 10^18 - 1 and 9 still fits in int64


@dataclass(frozen=True)
class DigitStructure:
    """Per-example structure for diagnostics, rows aligned with `ReversedDigitAddition.all`."""

    n_digits: int
    k: int
    numbers: Tensor  # (N,) the n-digit numbers
    carry_lengths: Tensor  # (N,) carry-chain length, 0..n (= Batch.group)
    digit_operations: Tensor  # (N, n + 1) index into operation_names per output digit o_0..o_n
    operation_names: tuple[str, ...]
    answer_positions: Tensor  # (n + 1,) target positions of o_0..o_n: n .. 2n
    indices: dict[str, Tensor]  # split -> row indices into `all`


def powers_of_ten(count: int, device: torch.device | None = None) -> Tensor:
    return 10 ** torch.arange(count, dtype=torch.long, device=device)


def carries_in(numbers: Tensor, n_digits: int, k: int) -> Tensor:
    """(N, n) bool: column i - 1 is True when a carry enters output digit i (i = 1..n)."""
    scale = powers_of_ten(n_digits, numbers.device) * 10  # 10^1 .. 10^n
    return (numbers[:, None] % scale) + k >= scale


def encode(numbers: Tensor, n_digits: int, k: int) -> Batch:
    """The batch of `numbers + k` (see the module docstring), group = carry-chain length."""
    n, count = n_digits, len(numbers)
    digits = numbers[:, None] // powers_of_ten(n, numbers.device) % 10
    sums = (numbers + k)[:, None] // powers_of_ten(n + 1, numbers.device) % 10
    sep = torch.full((count, 1), SEP, dtype=torch.long, device=numbers.device)
    eos = torch.full((count, 1), EOS, dtype=torch.long, device=numbers.device)
    sequence = torch.cat([digits, sep, sums, eos], dim=1)
    loss_mask = torch.zeros(count, 2 * n + 2, device=numbers.device)
    loss_mask[:, n:] = 1
    answer_mask = torch.zeros(count, 2 * n + 2, dtype=torch.bool, device=numbers.device)
    answer_mask[:, n : 2 * n + 1] = True
    group = carries_in(numbers, n, k).sum(1)
    return Batch(sequence[:, :-1], sequence[:, 1:], loss_mask, answer_mask, group)


def digit_operations(numbers: Tensor, n_digits: int, k: int) -> Tensor:
    """(N, n + 1) tags of o_0..o_n: 0 (+k) on o_0, 1 (+1) where a carry enters, 2 (+0) elsewhere."""
    tags = torch.full((len(numbers), n_digits + 1), 2, dtype=torch.long, device=numbers.device)
    tags[:, 0] = 0
    tags[:, 1:][carries_in(numbers, n_digits, k)] = 1
    return tags


def distinct_numbers(count: int, n_digits: int, generator: torch.Generator) -> Tensor:
    """`count` distinct numbers of 0..10^n - 1, a uniform random subset in random order."""
    total = 10**n_digits
    if total <= 10 * MAX_EXAMPLES:
        return torch.randperm(total, generator=generator)[:count]
    drawn = torch.empty(0, dtype=torch.long)
    while len(drawn) < count:  # 10^n >> count: a few rounds at most
        more = torch.randint(0, total, (2 * (count - len(drawn)) + 16,), generator=generator)
        drawn = torch.unique(torch.cat([drawn, more]))
    return drawn[torch.randperm(len(drawn), generator=generator)[:count]]


def mix_seed(seed: int, step: int) -> int:
    """A 64-bit generator seed for (seed, step), scrambled (splitmix64) so that no step's stream is that of a
    small seed such as the split's: plain `seed + step` would replay the split's draws in batch 0."""
    z = (seed * 0x9E3779B97F4A7C15 + step + 0x632BE59BD9B4E019) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ReversedDigitAddition(InMemoryTask):
    def __init__(
        self,
        n_digits: int = 2,
        k: int = 7,
        train_fraction: float = 0.8,
        val_fraction: float | None = None,
        test_fraction: float = 0.0,
        holdout_carry_chains: int | None = None,
        sample_size: int | None = None,
        sample_fresh: bool = False,
        batch_size: int = 128,
        eval_batch_size: int = -1,
        split_seed: int = 0,
        shuffle_seed: int = 0,
    ):
        super().__init__()
        self._validate(n_digits, k, train_fraction, val_fraction, test_fraction, holdout_carry_chains,
                       sample_size, sample_fresh, batch_size, eval_batch_size, split_seed, shuffle_seed)
        self.n_digits, self.k = n_digits, k
        self.holdout_carry_chains, self.sample_fresh = holdout_carry_chains, sample_fresh
        self.batch_size, self.eval_batch_size, self.shuffle_seed = batch_size, eval_batch_size, shuffle_seed

        generator = torch.Generator().manual_seed(split_seed)
        if sample_size is None:
            self.numbers = torch.arange(10**n_digits)
        else:
            self.numbers = distinct_numbers(sample_size, n_digits, generator)
        self.all = encode(self.numbers, n_digits, k)
        self.carry_lengths = self.all.group
        self.digit_operations = digit_operations(self.numbers, n_digits, k)
        self.indices = self._split(train_fraction, val_fraction, test_fraction, generator)
        self.splits = {name: take(self.all, idx) for name, idx in self.indices.items()}

    def _split(self, train_fraction, val_fraction, test_fraction, generator) -> dict[str, Tensor]:
        """Row indices of train/val/test: held-out long chains to test, the fractions over the other rows."""
        rows = torch.arange(len(self.numbers))
        held_out = torch.empty(0, dtype=torch.long)
        if self.holdout_carry_chains is not None:
            long_chain = self.carry_lengths >= self.holdout_carry_chains
            require(bool(long_chain.any()), "holdout_carry_chains", self.holdout_carry_chains,
                    f"a length some number reaches (the longest carry chain here is {int(self.carry_lengths.max())})")
            rows, held_out = rows[~long_chain], rows[long_chain]
        n = len(rows)
        n_train = math.floor(train_fraction * n)
        n_test = math.floor(test_fraction * n)
        n_val = n - n_train - n_test if val_fraction is None else math.floor(val_fraction * n)
        require(n_train > 0, "train_fraction", train_fraction, f"a fraction that leaves at least one of {n} numbers")
        # val = the rest always keeps one number (train + test < 1); a given val_fraction may round to none
        require(n_val > 0, "val_fraction", val_fraction, f"a fraction that leaves at least one of {n} numbers")
        order = rows[torch.randperm(n, generator=generator)]
        if self.holdout_carry_chains is None:
            test = order[n_train + n_val : n_train + n_val + n_test]
        else:
            test = held_out[torch.randperm(len(held_out), generator=generator)]
        return {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": test}

    @staticmethod
    def _validate(n_digits, k, train_fraction, val_fraction, test_fraction, holdout_carry_chains, sample_size,
                  sample_fresh, batch_size, eval_batch_size, split_seed, shuffle_seed) -> None:
        require(is_int(n_digits) and 1 <= n_digits <= MAX_DIGITS, "n_digits", n_digits,
                f"an integer in 1..{MAX_DIGITS}")
        require(is_int(k) and 0 <= k <= 9, "k", k,
                "an integer in 0..9 (one digit: the units digit gets +k and every other digit +1 or +0, which "
                "the carry-chain groups and digit tags rely on)")
        check_fractions(train_fraction, val_fraction, test_fraction)
        if holdout_carry_chains is not None:
            require(is_int(holdout_carry_chains) and 1 <= holdout_carry_chains <= n_digits, "holdout_carry_chains",
                    holdout_carry_chains, f"null or an integer in 1..n_digits={n_digits}", related=["n_digits"])
            require(k > 0, "holdout_carry_chains", holdout_carry_chains, "null when k=0 (no carries)",
                    related=["k"])
            require(test_fraction == 0, "test_fraction", test_fraction,
                    "0 with holdout_carry_chains (test is then the held-out long chains)",
                    related=["holdout_carry_chains"])
        total_numbers = 10**n_digits
        if sample_size is None:
            require(total_numbers <= MAX_EXAMPLES, "sample_size", sample_size,
                    f"an integer when 10^n_digits = {total_numbers:.0e} numbers are too many to hold "
                    f"(all are used up to {MAX_EXAMPLES:,})", related=["n_digits"])
        else:
            limit = min(total_numbers, MAX_EXAMPLES)
            require(is_int(sample_size) and 1 <= sample_size <= limit, "sample_size", sample_size,
                    f"null (every number) or an integer in 1..{limit:,} (10^n_digits numbers, at most "
                    f"{MAX_EXAMPLES:,} held)", related=["n_digits"])
        require(isinstance(sample_fresh, bool), "sample_fresh", sample_fresh, "true or false")
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            require(is_int(value) and (value == -1 or value > 0), key, value, "-1 (full batch) or a positive integer")
        require(not sample_fresh or batch_size > 0, "batch_size", batch_size,
                "a positive integer with sample_fresh (fresh numbers have no full batch)")
        for key, value in (("split_seed", split_seed), ("shuffle_seed", shuffle_seed)):
            require(is_int(value) and value >= 0, key, value, "a non-negative integer")

    @property
    def spec(self) -> TaskSpec:
        n = self.n_digits
        return TaskSpec(num_classes=VOCAB_SIZE, vocab_size=VOCAB_SIZE, seq_len=2 * n + 2, input_kind="tokens",
                        group_names=tuple(f"carry_{length}" for length in range(n + 1)),
                        metrics=("acc", "exact_match", "position_acc"), decoding="greedy", answer_length=n + 1)

    @property
    def answer_positions(self) -> Tensor:
        """Target positions of the sum's digits o_0..o_n."""
        return torch.arange(self.n_digits, 2 * self.n_digits + 1)

    def token_ids(self) -> dict[str, int]:
        return {**{str(d): d for d in range(10)}, "SEP": SEP, "EOS": EOS}

    def digit_structure(self) -> DigitStructure:
        return DigitStructure(self.n_digits, self.k, self.numbers, self.carry_lengths, self.digit_operations,
                              DIGIT_OPERATIONS, self.answer_positions, self.indices)

    def excluded_numbers(self) -> Tensor:
        """Sorted numbers of val and test, which fresh training batches leave out."""
        return torch.sort(self.numbers[torch.cat([self.indices["val"], self.indices["test"]])]).values

    def train_dataloader(self):
        if not self.sample_fresh:
            return super().train_dataloader()
        first_step = self.trainer.global_step if self.trainer is not None else 0
        return FreshTrainBatches(self.n_digits, self.k, self.excluded_numbers(), self.holdout_carry_chains,
                                 self.batch_size, self.shuffle_seed, self.splits["train"].targets.device,
                                 first_step, *self._ranks())


class FreshTrainBatches:
    """Endless batches of fresh numbers drawn uniformly (with replacement) from 0..10^n - 1 less `excluded` and
    chains >= `max_chain`. Batch k depends on (shuffle_seed, k) only, so a resumed run sees the same batches.
    They are drawn on the host (rejection keeps a varying number of draws, which on a GPU the host would have to
    read back) and handed to the device without the host waiting for it (`loaders.to_device`)."""

    def __init__(self, n_digits: int, k: int, excluded: Tensor, max_chain: int | None, batch_size: int,
                 shuffle_seed: int, device: torch.device, first_step: int = 0, rank: int = 0, world_size: int = 1):
        self.n_digits, self.k, self.excluded, self.max_chain = n_digits, k, excluded.cpu(), max_chain
        self.batch_size, self.shuffle_seed, self.device = batch_size, shuffle_seed, device
        self.first_step = first_step
        self.rank, self.world_size = rank, world_size

    def numbers(self, step: int) -> Tensor:
        """The numbers of batch `step` (on the CPU, the same on every process)."""
        generator = torch.Generator().manual_seed(mix_seed(self.shuffle_seed, step))
        kept = torch.empty(0, dtype=torch.long)
        while len(kept) < self.batch_size:
            drawn = torch.randint(0, 10**self.n_digits, (2 * self.batch_size + 16,), generator=generator)
            allowed = ~torch.isin(drawn, self.excluded)
            if self.max_chain is not None:
                allowed &= carries_in(drawn, self.n_digits, self.k).sum(1) < self.max_chain
            kept = torch.cat([kept, drawn[allowed]])
        return kept[: self.batch_size]

    def __iter__(self) -> Iterator[Batch]:
        step = self.first_step
        while True:
            batch = encode(to_device(self.numbers(step), self.device), self.n_digits, self.k)
            yield shard(batch, self.rank, self.world_size)
            step += 1
