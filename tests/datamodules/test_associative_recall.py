import pytest
import torch

import datamodules
from core.errors import ConfigError
from datamodules import AssociativeRecall
from datamodules.batch import answer_columns
from datamodules.task import Task


@pytest.fixture(scope="module")
def mqar():
    return AssociativeRecall(vocab_size=40, n_pairs=6, n_queries=4, n_train=400, n_val=100, n_test=50)


def rows(batch) -> set[tuple[int, ...]]:
    return {tuple(row) for row in batch.inputs.tolist()}


def test_every_query_is_answered_by_the_value_that_followed_its_key(mqar):
    n, m = 6, 4
    for split in mqar.splits.values():
        for x, y in zip(split.inputs.tolist(), split.targets.tolist()):
            assert len(x) == len(y) == 2 * n + m
            seen = {}
            for t in range(0, 2 * n, 2):  # scan the pairs in order, as a reader of the row would
                key, value = x[t], x[t + 1]
                assert key not in seen  # keys distinct within a row
                assert 0 <= key < 20 <= value < 40  # keys and values from disjoint halves of the vocabulary
                seen[key] = value
            queries = x[2 * n :]
            assert len(set(queries)) == m and all(q in seen for q in queries)
            assert y[2 * n :] == [seen[q] for q in queries]
            assert y[: 2 * n] == [0] * (2 * n)


def test_masks_sit_exactly_at_the_query_columns(mqar):
    columns = list(range(12, 16))
    for split in mqar.splits.values():
        assert split.loss_mask.dtype == torch.float32 and split.answer_mask.dtype == torch.bool
        expected = torch.tensor([t in columns for t in range(16)])
        assert (split.answer_mask == expected).all() and (split.loss_mask == expected.float()).all()
        assert (split.group == 0).all()
        assert answer_columns(split.answer_mask).tolist() == columns
    assert mqar.answer_positions.tolist() == columns and mqar.key_range == (0, 20)


def test_draws_cover_keys_values_and_query_orders():
    dm = AssociativeRecall(vocab_size=16, n_pairs=4, n_train=2000, n_val=10)
    x = dm.splits["train"].inputs
    keys, values, queries = x[:, 0:8:2], x[:, 1:8:2], x[:, 8:]
    assert set(keys.flatten().tolist()) == set(range(8)) and set(values.flatten().tolist()) == set(range(8, 16))
    # key order random, not sorted: 1,680 ordered key tuples (70 sets), ~1,170 distinct expected in 2,000 draws
    assert len(set(map(tuple, keys.tolist()))) > 1000
    assert (keys.diff(dim=1) > 0).all(1).float().mean() < 0.1  # ascending in ~1/24 of the rows
    # values drawn with replacement: besides the 4 diagonal matches a row has 12 / 8 repeated pairs on average
    assert (values[:, :, None] == values[:, None, :]).sum() > 5 * 2000
    # each query column asks each pair index about equally often (queries in random order)
    asked = (queries[:, :, None] == keys[:, None, :]).float().mean(0)  # (query, pair)
    assert torch.allclose(asked, torch.full((4, 4), 0.25), atol=0.05)


def test_seeded_and_splits_disjoint():
    a = AssociativeRecall(n_train=3000, n_val=500, n_test=200)
    b = AssociativeRecall(n_train=3000, n_val=500, n_test=200)
    c = AssociativeRecall(n_train=3000, n_val=500, n_test=200, split_seed=1)
    for name in ("train", "val", "test"):
        assert all(torch.equal(s, t) for s, t in zip(a.splits[name], b.splits[name]))
        assert not torch.equal(a.splits[name].inputs, c.splits[name].inputs)
    train, val, test = (rows(a.splits[name]) for name in ("train", "val", "test"))
    assert len(val) == 500 and len(test) == 200 and not (train & val or train & test or val & test)
    # each split its own stream: val does not move when train grows
    assert torch.equal(AssociativeRecall(n_train=100, n_val=500).splits["val"].inputs, a.splits["val"].inputs)
    assert not torch.equal(a.splits["train"].inputs[:500], a.splits["val"].inputs)
    assert a.split_names() == ("train", "val", "test") and a.has_test
    d = AssociativeRecall(n_train=100, n_val=10)
    assert not d.has_test and d.split_names() == ("train", "val") and d.splits["test"].inputs.shape == (0, 24)


def test_tiny_vocabularies_drop_val_examples_seen_in_train():
    # 3 keys, 3 values, 2 pairs, 2 queries: 3*2 key orders x 9 value pairs x 2 query orders = 108 examples
    dm = AssociativeRecall(vocab_size=6, n_pairs=2, n_train=100, n_val=100, n_test=100)
    train, val, test = (rows(dm.splits[name]) for name in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert 0 < len(dm.splits["val"].targets) < 100 and len(dm.splits["test"].targets) < 100
    assert len(train | val | test) <= 108
    with pytest.raises(ConfigError) as error:  # 1 key, 1 value: one possible example
        AssociativeRecall(vocab_size=2, n_pairs=1, n_train=10, n_val=10)
    assert error.value.key == "vocab_size" and "\n" not in str(error.value)


def test_mini_batches_come_from_train():
    dm = AssociativeRecall(n_train=500, n_val=50, batch_size=64)
    dm.setup()
    train = rows(dm.splits["train"])
    it = iter(dm.train_dataloader())
    for _ in range(3):
        batch = next(it)
        assert batch.inputs.shape == (64, 24) and rows(batch) <= train


def test_spec_and_the_metric_code_read_the_queries():
    from lightning_modules.answers import answer_sums, metric_layout, metric_names, metrics_from_sums

    dm = AssociativeRecall(vocab_size=32, n_pairs=5, n_queries=3, n_train=50, n_val=4)
    spec = dm.spec
    assert (spec.num_classes, spec.vocab_size, spec.seq_len, spec.input_kind) == (32, 32, 13, "tokens")
    assert spec.metrics == ("acc", "exact_match", "position_acc") and spec.answer_length == 3
    assert spec.decoding == "teacher_forced" and spec.group_names == ()
    assert isinstance(dm, Task) and datamodules.AssociativeRecall is AssociativeRecall
    assert AssociativeRecall(n_pairs=5).spec.answer_length == 5  # n_queries null = n_pairs

    # logits right everywhere except: example 0 query 1 and example 1 queries 0 and 2
    batch = dm.splits["val"]
    logits = torch.nn.functional.one_hot(batch.targets, 32).float()
    for i, t in ((0, 11), (1, 10), (1, 12)):
        logits[i, t] = torch.roll(logits[i, t], 1)
    groups, positions = metric_layout(spec)
    values = metrics_from_sums(answer_sums(torch.tensor(0.5), logits, batch, len(groups), positions), spec,
                               groups, positions)
    assert set(values) == set(metric_names(spec))
    assert values["acc"].item() == pytest.approx(9 / 12) and values["exact_match"].item() == pytest.approx(2 / 4)
    assert [values[f"acc/position_{i}"].item() for i in range(3)] == pytest.approx([3 / 4, 3 / 4, 3 / 4])


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"n_pairs": 0}, "n_pairs"),
        ({"n_pairs": 2.0}, "n_pairs"),
        ({"vocab_size": 15, "n_pairs": 8}, "vocab_size"),
        ({"vocab_size": True}, "vocab_size"),
        ({"n_queries": 9}, "n_queries"),
        ({"n_queries": 0}, "n_queries"),
        ({"n_train": 0}, "n_train"),
        ({"n_val": 0}, "n_val"),
        ({"n_test": -1}, "n_test"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_batch_size": -2}, "eval_batch_size"),
        ({"split_seed": -1}, "split_seed"),
        ({"shuffle_seed": 0.5}, "shuffle_seed"),
    ],
)
def test_bad_arguments_name_their_key(kwargs, key):
    with pytest.raises(ConfigError) as error:
        AssociativeRecall(**{"n_train": 10, "n_val": 10, **kwargs})
    assert error.value.key == key
    message = str(error.value.under("data"))
    assert message.startswith(f"data.{key}=") and "\n" not in message
    if key == "vocab_size" and kwargs.get("n_pairs") == 8:
        assert "16" in message  # the minimum
