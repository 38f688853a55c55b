import pytest
import torch

import datamodules
from core.errors import ConfigError
from datamodules import ReversedDigitAddition
from datamodules.digit_addition import DIGIT_OPERATIONS, EOS, SEP, FreshTrainBatches
from datamodules.task import Task


def brute_force_carries(x: int, n: int, k: int) -> list[bool]:
    """Schoolbook addition on decimal strings: carries[i] is True when a carry enters digit i + 1 (i = 0..n-1)."""
    a, b = str(x).zfill(n)[::-1], str(k).zfill(n)[::-1]
    carry, carries = 0, []
    for i in range(n):
        total = int(a[i]) + int(b[i]) + carry
        carry = 1 if total >= 10 else 0
        carries.append(bool(carry))
    return carries


def row_numbers(batch, n: int) -> list[int]:
    """The input numbers of a batch, read back from its first n input tokens (units first)."""
    return [sum(int(d) * 10**i for i, d in enumerate(row[:n])) for row in batch.inputs]


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("k", [0, 7, 9])
def test_every_example_decodes_to_its_number_plus_k(n, k):
    dm = ReversedDigitAddition(n_digits=n, k=k)
    x, y = dm.all.inputs.tolist(), dm.all.targets.tolist()
    seen = set()
    for i in range(len(x)):
        number = int("".join(str(d) for d in reversed(x[i][:n])))
        assert x[i][n] == SEP and y[i][-1] == EOS and y[i][: n - 1] == x[i][1:n]
        assert y[i][n - 1] == SEP and y[i][n:-1] == x[i][n + 1 :]  # next-token targets
        output = "".join(str(d) for d in y[i][n : 2 * n + 1])
        assert output == str(number + k).zfill(n + 1)[::-1]
        assert number == int(dm.numbers[i])
        seen.add(number)
    assert seen == set(range(10**n)) and len(x) == 10**n


def test_593_plus_7():
    dm = ReversedDigitAddition(n_digits=3, k=7)
    i = int((dm.numbers == 593).nonzero())
    assert dm.all.inputs[i].tolist() == [3, 9, 5, 10, 0, 0, 6, 0]
    assert dm.all.inputs[i, :4].tolist() == [3, 9, 5, 10]
    assert dm.all.targets[i, 3:].tolist() == [0, 0, 6, 0, 11]
    assert int(dm.all.group[i]) == 2
    assert [DIGIT_OPERATIONS[t] for t in dm.digit_operations[i]] == ["+k", "+1", "+1", "+0"]
    for number, chain in ((123, 1), (120, 0), (999, 3), (3, 1), (2, 0)):
        assert int(dm.carry_lengths[dm.numbers == number]) == chain


@pytest.mark.parametrize("k", [0, 1, 7, 9])
def test_carry_chains_match_string_arithmetic(k):
    n = 3
    dm = ReversedDigitAddition(n_digits=n, k=k)
    expected = [sum(brute_force_carries(x, n, k)) for x in dm.numbers.tolist()]
    assert dm.carry_lengths.tolist() == expected
    assert torch.equal(dm.all.group, dm.carry_lengths)
    if k == 7:  # 100 numbers per units digit, d0 >= 3 carries; then each 9 extends the chain
        counts = torch.bincount(dm.carry_lengths, minlength=n + 1).tolist()
        assert counts == [300, 630, 63, 7]


@pytest.mark.parametrize("k", [1, 7])
def test_digit_operations_match_the_digits_that_change(k):
    """Independently: o_0 is +k; a later output digit is +1 exactly where it differs from the input digit (0 above
    the number), since +1 changes every digit and +0 none."""
    n = 3
    dm = ReversedDigitAddition(n_digits=n, k=k)
    plus_k, plus_1, plus_0 = (DIGIT_OPERATIONS.index(name) for name in ("+k", "+1", "+0"))
    for x, tags in zip(dm.numbers.tolist(), dm.digit_operations.tolist()):
        digits_in = [int(c) for c in str(x).zfill(n + 1)[::-1]]
        digits_out = [int(c) for c in str(x + k).zfill(n + 1)[::-1]]
        expected = [plus_k] + [plus_1 if digits_out[i] != digits_in[i] else plus_0 for i in range(1, n + 1)]
        assert tags == expected, x
        assert tags.count(plus_1) == sum(brute_force_carries(x, n, k))


@pytest.mark.parametrize("n", [1, 2, 4])
def test_masks_cover_the_sum_digits_and_eos(n):
    dm = ReversedDigitAddition(n_digits=n)
    T = 2 * n + 2
    assert dm.all.inputs.shape[1] == dm.all.targets.shape[1] == T == dm.spec.seq_len
    loss_row = [0.0] * n + [1.0] * (n + 2)
    answer_row = [False] * n + [True] * (n + 1) + [False]
    assert (dm.all.loss_mask == torch.tensor(loss_row)).all()
    assert (dm.all.answer_mask == torch.tensor(answer_row)).all()
    assert dm.all.loss_mask.dtype == torch.float32 and dm.all.answer_mask.dtype == torch.bool
    assert dm.answer_positions.tolist() == list(range(n, 2 * n + 1))
    # answer positions hold digits, the last loss position EOS, positions outside the loss input digits and SEP
    assert (dm.all.targets[dm.all.answer_mask] <= 9).all()
    assert (dm.all.targets[:, -1] == EOS).all() and (dm.all.targets[:, n - 1] == SEP).all()
    assert (dm.all.targets[:, : n - 1] <= 9).all()


def test_spec():
    dm = ReversedDigitAddition(n_digits=3)
    spec = dm.spec
    assert (spec.num_classes, spec.vocab_size, spec.seq_len, spec.input_kind) == (12, 12, 8, "tokens")
    assert spec.group_names == ("carry_0", "carry_1", "carry_2", "carry_3")
    assert spec.metrics == ("acc", "exact_match", "position_acc") and spec.decoding == "greedy"
    assert int(dm.all.inputs.max()) < spec.vocab_size and int(dm.all.targets.max()) < spec.num_classes
    assert isinstance(dm, Task) and datamodules.ReversedDigitAddition is ReversedDigitAddition


def test_splits_are_disjoint_by_number_and_cover_everything():
    dm = ReversedDigitAddition(n_digits=3, train_fraction=0.6, test_fraction=0.1)
    numbers = {name: set(row_numbers(split, 3)) for name, split in dm.splits.items()}
    sizes = {name: len(split.targets) for name, split in dm.splits.items()}
    assert sizes == {"train": 600, "val": 300, "test": 100}
    assert all(len(numbers[name]) == sizes[name] for name in sizes)  # no number twice within a split
    assert not (numbers["train"] & numbers["val"] or numbers["train"] & numbers["test"] or numbers["val"] & numbers["test"])
    assert numbers["train"] | numbers["val"] | numbers["test"] == set(range(1000))
    for name, idx in dm.indices.items():
        assert set(dm.numbers[idx].tolist()) == numbers[name]
    assert dm.split_names() == ("train", "val", "test") and dm.has_test
    # the same split_seed, the same split; another, another
    again, other = ReversedDigitAddition(n_digits=3, train_fraction=0.6, test_fraction=0.1), \
        ReversedDigitAddition(n_digits=3, train_fraction=0.6, test_fraction=0.1, split_seed=1)
    assert torch.equal(again.indices["val"], dm.indices["val"])
    assert not torch.equal(other.indices["val"], dm.indices["val"])


def test_empty_test_split_keeps_its_trailing_shapes():
    dm = ReversedDigitAddition(n_digits=2)
    test = dm.splits["test"]
    assert test.inputs.shape == (0, 6) and test.targets.shape == (0, 6) and test.group.shape == (0,)
    assert not dm.has_test and dm.split_names() == ("train", "val")
    assert len(dm.splits["train"].targets) == 80 and len(dm.splits["val"].targets) == 20


@pytest.mark.parametrize("holdout", [1, 2, 3])
def test_holdout_carry_chains_puts_exactly_the_long_chains_in_test(holdout):
    n, k = 3, 7
    dm = ReversedDigitAddition(n_digits=n, k=k, holdout_carry_chains=holdout, train_fraction=0.7)
    long_chain = {x for x in range(1000) if sum(brute_force_carries(x, n, k)) >= holdout}
    assert set(row_numbers(dm.splits["test"], n)) == long_chain
    assert (dm.splits["test"].group >= holdout).all()
    for name in ("train", "val"):
        assert (dm.splits[name].group < holdout).all()
    rest = 1000 - len(long_chain)
    assert len(dm.splits["train"].targets) == int(0.7 * rest)
    assert len(dm.splits["train"].targets) + len(dm.splits["val"].targets) == rest


def test_sampled_numbers_are_distinct_and_seeded():
    dm = ReversedDigitAddition(n_digits=8, sample_size=5000)
    numbers = dm.numbers.tolist()
    assert len(set(numbers)) == 5000 and min(numbers) >= 0 and max(numbers) < 10**8
    assert row_numbers(dm.all, 8) == numbers
    assert max(numbers) > 9 * 10**7 and min(numbers) < 10**7  # spread over the range, not the low end
    assert torch.equal(ReversedDigitAddition(n_digits=8, sample_size=5000).numbers, dm.numbers)
    other = ReversedDigitAddition(n_digits=8, sample_size=5000, split_seed=1).numbers.tolist()
    assert len(set(other) & set(numbers)) < 50
    outputs = ["".join(map(str, row)) for row in dm.all.targets[:, 8:17].tolist()]
    assert outputs == [str(x + 7).zfill(9)[::-1] for x in numbers]
    assert sum(len(split.targets) for split in dm.splits.values()) == 5000


def test_sample_size_below_ten_to_the_n_draws_a_subset():
    dm = ReversedDigitAddition(n_digits=3, sample_size=300)
    assert len(set(dm.numbers.tolist())) == 300 and int(dm.numbers.max()) < 1000


def test_fresh_batches_avoid_val_and_test_and_are_a_function_of_the_step():
    dm = ReversedDigitAddition(n_digits=8, sample_size=2000, test_fraction=0.1, sample_fresh=True, batch_size=64)
    held = set(dm.numbers[torch.cat([dm.indices["val"], dm.indices["test"]])].tolist())
    assert len(held) == 2000 - len(dm.indices["train"])
    loader = dm.train_dataloader()
    assert isinstance(loader, FreshTrainBatches)
    it = iter(loader)
    batches = [next(it) for _ in range(20)]
    seen = set()
    for batch in batches:
        assert batch.inputs.shape == (64, 18)
        numbers = row_numbers(batch, 8)
        assert not held & set(numbers)
        outputs = ["".join(map(str, row)) for row in batch.targets[:, 8:17].tolist()]
        assert outputs == [str(x + 7).zfill(9)[::-1] for x in numbers]
        seen |= set(numbers)
    assert len(seen) > 1200  # fresh: almost all of the 1,280 draws differ, and they are not the train split
    assert len(seen & set(dm.numbers.tolist())) < 5
    step = 7
    resumed = iter(FreshTrainBatches(8, 7, dm.excluded_numbers(), None, 64, 0, torch.device("cpu"), first_step=step))
    assert all(torch.equal(a, b) for a, b in zip(next(resumed), batches[step]))
    other_seed = iter(FreshTrainBatches(8, 7, dm.excluded_numbers(), None, 64, 1, torch.device("cpu")))
    assert not torch.equal(next(other_seed).inputs, batches[0].inputs)
    # DDP: the shards of one step make up the whole batch
    shards = [next(iter(FreshTrainBatches(8, 7, dm.excluded_numbers(), None, 64, 0, torch.device("cpu"),
                                          first_step=step, rank=r, world_size=2))) for r in (0, 1)]
    assert sorted(row_numbers(shards[0], 8) + row_numbers(shards[1], 8)) == sorted(row_numbers(batches[step], 8))


def test_fresh_batches_in_the_exhaustive_case_are_train_numbers_and_respect_the_holdout():
    dm = ReversedDigitAddition(n_digits=2, holdout_carry_chains=2, sample_fresh=True, batch_size=32)
    train = set(row_numbers(dm.splits["train"], 2))
    it = iter(dm.train_dataloader())
    drawn = set()
    for _ in range(30):
        batch = next(it)
        drawn |= set(row_numbers(batch, 2))
        assert (batch.group < 2).all()
    assert drawn == train  # 960 draws from the train numbers reach every one of them


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"n_digits": 0}, "n_digits"),
        ({"n_digits": 19}, "n_digits"),
        ({"n_digits": 2.0}, "n_digits"),
        ({"k": -1}, "k"),
        ({"k": 10}, "k"),
        ({"k": True}, "k"),
        ({"train_fraction": 0.0}, "train_fraction"),
        ({"train_fraction": 1.0}, "train_fraction"),
        ({"train_fraction": 0.001}, "train_fraction"),  # n=2: no train number
        ({"val_fraction": 0.001}, "val_fraction"),  # n=2: no val number
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"train_fraction": 0.8, "test_fraction": 0.2}, "test_fraction"),
        ({"train_fraction": 0.8, "val_fraction": 0.3}, "val_fraction"),
        ({"holdout_carry_chains": 0}, "holdout_carry_chains"),
        ({"holdout_carry_chains": 3}, "holdout_carry_chains"),
        ({"holdout_carry_chains": 1, "k": 0}, "holdout_carry_chains"),
        ({"holdout_carry_chains": 1, "test_fraction": 0.1}, "test_fraction"),
        ({"n_digits": 8, "sample_size": 100, "holdout_carry_chains": 8}, "holdout_carry_chains"),  # none reach it
        ({"n_digits": 7}, "sample_size"),
        ({"sample_size": 0}, "sample_size"),
        ({"sample_size": 101}, "sample_size"),
        ({"n_digits": 9, "sample_size": 2_000_000}, "sample_size"),
        ({"sample_fresh": 1}, "sample_fresh"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -1, "sample_fresh": True}, "batch_size"),
        ({"eval_batch_size": -2}, "eval_batch_size"),
        ({"split_seed": -1}, "split_seed"),
        ({"shuffle_seed": 1.5}, "shuffle_seed"),
    ],
)
def test_bad_arguments_name_their_key(kwargs, key):
    with pytest.raises(ConfigError) as error:
        ReversedDigitAddition(**kwargs)
    assert error.value.key == key
    message = str(error.value)
    assert message.startswith(f"{key}=") and "\n" not in message


def test_digit_structure_is_aligned_with_all():
    dm = ReversedDigitAddition(n_digits=3, test_fraction=0.1)
    structure = dm.digit_structure()
    assert (structure.n_digits, structure.k, structure.operation_names) == (3, 7, DIGIT_OPERATIONS)
    assert torch.equal(structure.numbers, dm.numbers) and torch.equal(structure.carry_lengths, dm.all.group)
    assert structure.digit_operations.shape == (1000, 4)
    assert structure.answer_positions.tolist() == [3, 4, 5, 6]
    assert torch.equal(dm.all.answer_mask[0].nonzero().flatten(), structure.answer_positions)
    for name, idx in structure.indices.items():
        assert torch.equal(dm.splits[name].inputs, dm.all.inputs[idx])
    with pytest.raises(Exception):
        structure.k = 3  # frozen
