import re

import pytest
import torch

from core.errors import ConfigError
from datamodules import ModularArithmetic
from datamodules.loaders import TrainBatches
from datamodules.operations import OPERATIONS, is_prime


def reference_label(op: str, a: int, b: int, p: int) -> int:
    """Written independently of the module: plain integer arithmetic, brute-force inverse."""
    if op == "add":
        return (a + b) % p
    if op == "sub":
        return (a - b) % p
    if op == "mul":
        return (a * b) % p
    if op == "div":
        inv = next(x for x in range(p) if (b * x) % p == 1)
        return (a * inv) % p
    if op == "sum_of_squares":
        return (a * a + b * b) % p
    raise KeyError(op)


def decode(dm: ModularArithmetic, i: int):
    """(a, op name, b, c) of example i, read back from the encoded inputs."""
    p, x = dm.p, dm.all.inputs[i]
    c = int(dm.all.targets[i][dm.all.answer_mask[i]].item())
    if dm.format == "onehot":
        a, b = int(x[:p].argmax()), int(x[p : 2 * p].argmax())
        op = int(x[2 * p :].argmax()) if dm.n_ops > 1 else 0
    elif dm.format == "tokens":
        a, op, b = int(x[0]), int(x[1]) - p, int(x[2])
    else:
        a, op, b = int(x[1]), int(x[2]) - p, int(x[3])
    return a, dm.operations[op], b, c


@pytest.mark.parametrize("fmt", ["onehot", "tokens", "sequence"])
def test_every_label_matches_its_operation(fmt):
    p = 7
    ops = list(OPERATIONS)
    dm = ModularArithmetic(p=p, operations=ops, format=fmt, train_fraction=0.5)
    seen = set()
    for i in range(len(dm.all.targets)):
        a, op, b, c = decode(dm, i)
        assert c == reference_label(op, a, b, p), (op, a, b)
        assert int(dm.all.group[i]) == ops.index(op)
        seen.add((op, a, b))
    # every pair of every operation exactly once; division leaves out b = 0
    expected = {(op, a, b) for op in ops for a in range(p) for b in range(p) if not (op == "div" and b == 0)}
    assert seen == expected and len(seen) == len(dm.all.targets)


def test_onehot_layout_is_two_p_dims_for_one_operation():
    dm = ModularArithmetic(p=5, format="onehot")
    assert dm.all.inputs.shape == (25, 10) and dm.spec.in_features == 10
    assert torch.all(dm.all.inputs.sum(1) == 2)


def test_sequence_format_tokens_and_answer_mask():
    p = 5
    dm = ModularArithmetic(p=p, operations=["add", "mul"], format="sequence", loss_on="answer")
    ids = dm.token_ids()
    assert ids == {"op:add": 5, "op:mul": 6, "EQ": 7, "BOS": 8, "EOS": 9}
    assert dm.spec.vocab_size == dm.spec.num_classes == p + 2 + 3
    x, y, mask = dm.all.inputs, dm.all.targets, dm.all.loss_mask
    assert x.shape == (2 * p * p, 7) and y.shape == (2 * p * p, 7)
    assert torch.all(x[:, 0] == ids["BOS"]) and torch.all(x[:, 4] == ids["EQ"])
    assert torch.all(y[:, 5] == ids["EOS"]) and torch.all(y[:, 6] == ids["EOS"])
    assert torch.equal(y[:, :4], x[:, 1:5])  # next-token targets
    # answer-only: exactly the position whose target is c
    assert torch.equal(mask, torch.zeros_like(mask).index_fill_(1, torch.tensor([4]), 1.0))
    assert torch.equal(dm.all.answer_mask, mask.bool())  # the answer is position 4 whatever the loss covers
    all_positions = ModularArithmetic(p=p, format="sequence", loss_on="all")
    assert torch.all(all_positions.all.loss_mask == 1)
    answers = all_positions.all.answer_mask
    assert answers[:, 4].all() and answers.sum().item() == len(answers)  # loss on all, answer still c alone


def test_tokens_format_predicts_residues_only():
    dm = ModularArithmetic(p=11, format="tokens")
    assert dm.spec.num_classes == 11 and dm.spec.vocab_size == 11 + 1 + 3 and dm.spec.seq_len == 4
    assert dm.all.targets.shape == (121, 1)


def test_without_op_token_the_input_is_a_b_eq_and_the_answer_follows_eq():
    """Nanda et al.'s input: [a, b, =] with = the token p, vocabulary p + 1, the answer read at =."""
    p = 7
    dm = ModularArithmetic(p=p, format="tokens", op_token=False)
    assert dm.token_ids() == {"EQ": 7} and dm.operand_columns == (0, 1)
    row = 3 * p + 5  # a-major: a = 3, b = 5
    assert dm.all.inputs[row].tolist() == [3, 5, 7]
    assert dm.all.targets[row].tolist() == [(3 + 5) % p] and dm.all.loss_mask[row].tolist() == [1.0]
    spec = dm.spec
    assert (spec.num_classes, spec.vocab_size, spec.seq_len) == (p, p + 1, 3)
    assert dm.all.answer_mask.all()  # the one target is the answer
    assert dm.all.inputs.shape == (p * p, 3) and dm.all.targets.shape == (p * p, 1)
    with_op = ModularArithmetic(p=p, format="tokens")
    assert with_op.all.inputs[row].tolist() == [3, 7, 5, 8] and with_op.operand_columns == (0, 2)
    assert torch.equal(with_op.all.targets, dm.all.targets)


@pytest.mark.parametrize("test_fraction", [0.0, 0.2])
def test_splits_are_disjoint_and_complete(test_fraction):
    dm = ModularArithmetic(p=13, train_fraction=0.3, test_fraction=test_fraction)
    idx = dm.indices
    sets = [set(idx[s].tolist()) for s in ("train", "val", "test")]
    assert sum(len(s) for s in sets) == 169 and set().union(*sets) == set(range(169))
    assert len(sets[0]) == int(0.3 * 169) and len(sets[2]) == int(test_fraction * 169)
    assert dm.has_test == (test_fraction > 0)


def test_explicit_val_fraction_can_leave_examples_unused():
    dm = ModularArithmetic(p=10, operations=["add"], train_fraction=0.5, val_fraction=0.2)
    assert len(dm.indices["train"]) == 50 and len(dm.indices["val"]) == 20


def test_same_split_seed_same_split_other_seed_other_split():
    a, b = ModularArithmetic(p=13, split_seed=3), ModularArithmetic(p=13, split_seed=3)
    c = ModularArithmetic(p=13, split_seed=4)
    assert torch.equal(a.indices["train"], b.indices["train"])
    assert not torch.equal(a.indices["train"], c.indices["train"])


def test_fifty_fifty_split_matches_the_seed_study_sizes():
    dm = ModularArithmetic(p=97, train_fraction=0.5)
    assert (len(dm.indices["train"]), len(dm.indices["val"])) == (4704, 4705)


def test_minibatches_cover_each_example_once_per_epoch_and_resume_in_place():
    dm = ModularArithmetic(p=11, train_fraction=0.5, batch_size=16, shuffle_seed=1)
    loader = TrainBatches(dm.splits["train"], 16, shuffle_seed=1)
    it = iter(loader)
    n = len(dm.splits["train"].targets)
    per_epoch = -(-n // 16)
    epoch = [next(it) for _ in range(per_epoch)]
    inputs = torch.cat([b.inputs for b in epoch])
    assert len(inputs) == n
    assert sorted(map(tuple, inputs.tolist())) == sorted(map(tuple, dm.splits["train"].inputs.tolist()))
    ahead = [next(it) for _ in range(3)]
    again = iter(TrainBatches(dm.splits["train"], 16, shuffle_seed=1, first_step=per_epoch))
    for expected in ahead:
        assert torch.equal(next(again).inputs, expected.inputs)


def test_full_batch_serves_the_same_tensors_without_copying():
    dm = ModularArithmetic(p=11)
    it = iter(dm.train_dataloader())
    assert next(it).inputs is next(it).inputs is dm.splits["train"].inputs


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(p=15, operations=["div"]), "p"),
        (dict(p=1), "p"),
        (dict(p="97"), "p"),
        (dict(operations=["pow"]), "operations"),
        (dict(operations=[]), "operations"),
        (dict(format="image"), "format"),
        (dict(train_fraction=1.2), "train_fraction"),
        (dict(train_fraction=0.0), "train_fraction"),
        (dict(train_fraction=0.6, test_fraction=0.5), "test_fraction"),
        (dict(train_fraction=0.7, val_fraction=0.4), "val_fraction"),
        (dict(batch_size=0), "batch_size"),
        (dict(loss_on="all", format="onehot"), "loss_on"),
        (dict(op_token="no"), "op_token"),
        (dict(op_token=False, format="tokens", operations=["add", "mul"]), "op_token"),
        (dict(op_token=False, format="sequence"), "op_token"),
    ],
)
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        ModularArithmetic(**kwargs)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}=")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(train_fraction=0.5, test_fraction=0.6), "test_fraction=0.6 is not allowed: expected train + val + test "
                                                      "fractions <= 1 with room for val (train 0.5 + test 0.6 = 1.1)"),
        (dict(train_fraction=0.5, val_fraction=0.3, test_fraction=0.3),
         "test_fraction=0.3 is not allowed: expected train + val + test fractions <= 1 (train 0.5 + val 0.3 + "
         "test 0.3 = 1.1)"),
        (dict(train_fraction=0.9, val_fraction=0.2), "val_fraction=0.2 is not allowed: expected train + val + test "
                                                     "fractions <= 1 (train 0.9 + val 0.2 = 1.1)"),
    ],
)
def test_fractions_that_do_not_add_up_name_the_one_set_last_and_show_the_sum(kwargs, message):
    with pytest.raises(ConfigError) as info:
        ModularArithmetic(**kwargs)
    assert str(info.value) == message


def storage_bytes(dm: ModularArithmetic) -> int:
    """Bytes of every distinct tensor storage behind the table, the splits and the grid (views counted once)."""
    storages = {}
    for batch in (dm.all, *dm.splits.values(), dm.grid()):
        for tensor in batch:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("kwargs", [dict(p=11), dict(p=13, operations=["add", "div", "mul"]),
                                    dict(p=11, format="tokens"), dict(p=11, format="tokens", op_token=False),
                                    dict(p=11, format="sequence", test_fraction=0.2),
                                    dict(p=13, format="sequence", operations=["div", "add"], val_fraction=0.2)])
def test_memory_estimate_is_close_to_what_the_datamodule_really_holds(kwargs):
    dm = ModularArithmetic(**kwargs)
    assert 1 <= dm.estimated_bytes() / storage_bytes(dm) <= 1.5


def test_a_size_that_cannot_fit_in_memory_is_refused_before_allocating():
    with pytest.raises(ConfigError) as info:
        ModularArithmetic(p=100003)
    assert re.fullmatch(r"p=100003 is not allowed: expected a size whose data fit in memory \(10,000,600,009 "
                        r"examples need ~24\.0 PB; limit [\d.,]+ [kMGT]?B = 50% of this machine's [\d.,]+ [kMGT]?B\)",
                        str(info.value)), str(info.value)


def test_is_prime():
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]


def test_leaving_out_the_op_token_with_several_operations_is_refused_in_one_line():
    with pytest.raises(ConfigError) as info:
        ModularArithmetic(p=7, format="tokens", operations=["add", "mul"], op_token=False)
    assert str(info.value) == ("op_token=False is not allowed: expected true with several operations (the input "
                               "must say which applies: add, mul)")
