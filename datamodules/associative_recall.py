"""Multi-query associative recall (MQAR; Arora et al., "Zoology: Measuring and Improving Recall in Efficient
Language Models", 2023): read n key-value pairs, then answer m queries, each the value that followed the queried key.

Why: recall of earlier context is what separates attention from fixed-state mixers (gated linear recurrences,
Gated DeltaNet, ...), and MQAR isolates it: the answer is a lookup, with nothing to compute, so a net's accuracy is
how much of the context it can retrieve.

Encoding (n_pairs = 3, n_queries = 2; keys in [0, vocab_size // 2), values in [vocab_size // 2, vocab_size)):

    inputs    k1 v1 k2 v2 k3 v3 q1 q2       (q_j one of the row's keys; T = 2 n_pairs + n_queries)
    targets    0  0  0  0  0  0 a1 a2       (a_j the value that followed q_j; 0 where masked)
    loss_mask  0  0  0  0  0  0  1  1       (the net reads q_j and predicts its value as the next token)
    answer     F  F  F  F  F  F  T  T

Keys of a row are distinct (drawn without replacement, in random order); values are drawn with replacement; the
queries are distinct keys of the row in random order. The queries sit in the last n_queries columns of every row, so
`acc` is per query, `exact_match` every query of an example right, `acc/position_<i>` the i-th query's accuracy.

Each split is drawn with its own generator, seeded from (split_seed, split), so a split's examples do not depend on
the other splits' sizes. A val (test) example identical to one of train (train or val) is dropped, so the splits are
disjoint by construction; with any but tiny vocabularies none is (the defaults have about 10^28 possible examples),
and a split left empty is refused, naming vocab_size.
"""
from __future__ import annotations

import torch
from torch import Tensor

from core.errors import require
from datamodules.batch import Batch, TaskSpec
from datamodules.digit_addition import is_int, mix_seed
from datamodules.in_memory import InMemoryTask

SPLITS = ("train", "val", "test")
MAX_EXAMPLES = 10_000_000  # per split
CHUNK_ELEMENTS = 1 << 24  # random numbers drawn at once when picking keys (rows x key vocabulary)


def draw(count: int, vocab_size: int, n_pairs: int, n_queries: int, generator: torch.Generator) -> Batch:
    """`count` MQAR examples (see the module docstring)."""
    n_keys = vocab_size // 2
    rows = max(1, CHUNK_ELEMENTS // n_keys)
    # top-k of iid uniforms: a uniformly random set of distinct keys in uniformly random order
    keys = torch.cat([torch.rand(min(rows, count - i), n_keys, generator=generator).topk(n_pairs, dim=1).indices
                      for i in range(0, count, rows)]) if count else torch.empty(0, n_pairs, dtype=torch.long)
    values = torch.randint(n_keys, vocab_size, (count, n_pairs), generator=generator)
    asked = torch.rand(count, n_pairs, generator=generator).argsort(dim=1)[:, :n_queries]  # pair indices, distinct
    queries, answers = keys.gather(1, asked), values.gather(1, asked)
    pairs = torch.stack([keys, values], dim=2).reshape(count, 2 * n_pairs)
    inputs = torch.cat([pairs, queries], dim=1)
    length = 2 * n_pairs + n_queries
    targets = torch.zeros(count, length, dtype=torch.long)
    targets[:, 2 * n_pairs:] = answers
    answer_mask = torch.zeros(count, length, dtype=torch.bool)
    answer_mask[:, 2 * n_pairs:] = True
    return Batch(inputs, targets, answer_mask.float(), answer_mask, torch.zeros(count, dtype=torch.long))


def rows_in(rows: Tensor, reference: Tensor) -> Tensor:
    """(len(rows),) bool: True where a row of `rows` equals some row of `reference`."""
    if not len(rows) or not len(reference):
        return torch.zeros(len(rows), dtype=torch.bool)
    _, inverse = torch.unique(torch.cat([reference, rows]), dim=0, return_inverse=True)
    seen = torch.zeros(int(inverse.max()) + 1, dtype=torch.bool)
    seen[inverse[: len(reference)]] = True
    return seen[inverse[len(reference):]]


class AssociativeRecall(InMemoryTask):
    def __init__(
        self,
        vocab_size: int = 64,
        n_pairs: int = 8,
        n_queries: int | None = None,
        n_train: int = 20_000,
        n_val: int = 1_000,
        n_test: int = 0,
        batch_size: int = 64,
        eval_batch_size: int = -1,
        split_seed: int = 0,
        shuffle_seed: int = 0,
    ):
        super().__init__()
        n_queries = n_pairs if n_queries is None else n_queries
        self._validate(vocab_size, n_pairs, n_queries, n_train, n_val, n_test, batch_size, eval_batch_size,
                       split_seed, shuffle_seed)
        self.vocab_size, self.n_pairs, self.n_queries = vocab_size, n_pairs, n_queries
        self.batch_size, self.eval_batch_size, self.shuffle_seed = batch_size, eval_batch_size, shuffle_seed
        sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.splits, earlier = {}, torch.empty(0, 2 * n_pairs + n_queries, dtype=torch.long)
        for index, name in enumerate(SPLITS):
            generator = torch.Generator().manual_seed(mix_seed(split_seed, index))
            split = draw(sizes[name], vocab_size, n_pairs, n_queries, generator)
            if name != "train":  # disjoint from the earlier splits (drops nothing unless the vocabulary is tiny)
                fresh = ~rows_in(split.inputs, earlier)
                split = Batch(*(t[fresh] for t in split))
                require(len(split.targets) > 0 or sizes[name] == 0, "vocab_size", vocab_size,
                        f"a larger vocabulary: every {name} example also occurs in an earlier split")
            self.splits[name] = split
            earlier = torch.cat([earlier, split.inputs])

    @staticmethod
    def _validate(vocab_size, n_pairs, n_queries, n_train, n_val, n_test, batch_size, eval_batch_size, split_seed,
                  shuffle_seed) -> None:
        require(is_int(n_pairs) and n_pairs >= 1, "n_pairs", n_pairs, "a positive integer")
        require(is_int(vocab_size) and vocab_size >= 2 * n_pairs, "vocab_size", vocab_size,
                f"an integer >= 2 * n_pairs = {2 * n_pairs} (keys are the lower half of the ids, values the upper; "
                f"a row has n_pairs distinct keys)", related=["n_pairs"])
        require(is_int(n_queries) and 1 <= n_queries <= n_pairs, "n_queries", n_queries,
                f"null (= n_pairs) or an integer in 1..n_pairs={n_pairs} (queries are distinct keys of the row)",
                related=["n_pairs"])
        require(is_int(n_train) and 1 <= n_train <= MAX_EXAMPLES, "n_train", n_train,
                f"an integer in 1..{MAX_EXAMPLES:,}")
        require(is_int(n_val) and 1 <= n_val <= MAX_EXAMPLES, "n_val", n_val, f"an integer in 1..{MAX_EXAMPLES:,}")
        require(is_int(n_test) and 0 <= n_test <= MAX_EXAMPLES, "n_test", n_test,
                f"an integer in 0..{MAX_EXAMPLES:,} (0 = no test split)")
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            require(is_int(value) and (value == -1 or value > 0), key, value, "-1 (full batch) or a positive integer")
        for key, value in (("split_seed", split_seed), ("shuffle_seed", shuffle_seed)):
            require(is_int(value) and value >= 0, key, value, "a non-negative integer")

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(num_classes=self.vocab_size, vocab_size=self.vocab_size,
                        seq_len=2 * self.n_pairs + self.n_queries, input_kind="tokens",
                        metrics=("acc", "exact_match", "position_acc"), answer_length=self.n_queries)

    @property
    def answer_positions(self) -> Tensor:
        """Target positions of the queries' answers: the last n_queries columns."""
        return torch.arange(2 * self.n_pairs, 2 * self.n_pairs + self.n_queries)

    @property
    def key_range(self) -> tuple[int, int]:
        """[low, high) of key ids (values are [high, vocab_size))."""
        return 0, self.vocab_size // 2
