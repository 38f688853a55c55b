import hashlib
import math
import sys
from collections import Counter

import pytest
import torch

import datamodules
from core.errors import ConfigError
from datamodules import ByteText
from datamodules.byte_text import TrainWindows
from datamodules.byte_tokenizer import VOCAB_SIZE, decode, encode
from datamodules.task import Task


def pydoc_text() -> bytes:
    """The bundled corpus, built here independently of the module."""
    from pydoc_data import topics

    return "\n\n".join(text for _, text in sorted(topics.topics.items())).encode("utf-8")


@pytest.fixture(scope="module")
def text():
    return ByteText(seq_len=64, batch_size=16, eval_windows=20, val_fraction=0.1, test_fraction=0.05)


def as_bytes(row) -> bytes:
    return bytes(row.tolist())


def test_encode_decode_round_trip_on_non_ascii():
    s = "grüße, 世界 — ∑ 🙂\n"
    ids = encode(s)
    assert ids.dtype == torch.uint8 and as_bytes(ids) == s.encode("utf-8") and len(ids) == len(s.encode("utf-8"))
    assert decode(ids) == s and decode(ids.long()) == s and decode(ids.tolist()) == s
    assert as_bytes(encode(b"\x00\xff")) == b"\x00\xff" and len(encode("")) == 0 and VOCAB_SIZE == 256
    assert decode(encode("世")[:2]) == "\ufffd"  # a cut character is replaced, not an error
    assert ByteText.text_of(encode(s)) == s


def test_bundled_corpus_and_its_record(text):
    corpus = pydoc_text()
    info = text.corpus_info()
    assert info.name == "pydoc_data" and info.size_bytes == len(corpus) > 100_000
    assert info.sha256 == hashlib.sha256(corpus).hexdigest()[:16]
    assert info.python_version == ".".join(map(str, sys.version_info[:3]))
    assert info.as_dict()["size_bytes"] == len(corpus)
    assert as_bytes(text.corpus) == corpus


def test_split_is_contiguous_and_exhaustive(text):
    corpus = pydoc_text()
    parts = {name: as_bytes(text.split_bytes(name)) for name in ("train", "val", "test")}
    assert parts["train"] + parts["val"] + parts["test"] == corpus
    n = len(corpus)
    assert len(parts["val"]) == math.floor(0.1 * n) and len(parts["test"]) == math.floor(0.05 * n)
    assert corpus.startswith(parts["train"]) and corpus.endswith(parts["test"])
    assert text.split_names() == ("train", "val", "test") and text.has_test


def test_training_windows_are_shifted_substrings_of_the_train_split(text):
    corpus, train = pydoc_text(), as_bytes(text.split_bytes("train"))
    loader = text.train_dataloader()
    assert isinstance(loader, TrainWindows) and not loader.full_batch
    it = iter(loader)
    for step in range(3):
        batch = next(it)
        assert batch.inputs.shape == batch.targets.shape == (16, 64) and batch.inputs.dtype == torch.long
        assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
        assert (batch.loss_mask == 1).all() and batch.answer_mask.all() and (batch.group == 0).all()
        assert batch.loss_mask.dtype == torch.float32 and batch.answer_mask.dtype == torch.bool
        for start, x, y in zip(loader.starts(step).tolist(), batch.inputs, batch.targets):
            window = as_bytes(x) + as_bytes(y[-1:])
            assert 0 <= start and start + 65 <= len(train)  # inside the train split, not crossing into val
            assert window == corpus[start : start + 65] and window in train


def test_batch_k_is_a_function_of_the_seed_and_k(text):
    it = iter(text.train_dataloader())
    batches = [next(it) for _ in range(6)]
    for k in (0, 3, 5):
        resumed = next(iter(TrainWindows(text.split_bytes("train"), 64, 16, 0, first_step=k)))
        assert all(torch.equal(a, b) for a, b in zip(resumed, batches[k]))
    assert not torch.equal(batches[0].inputs, batches[1].inputs)
    other_seed = next(iter(TrainWindows(text.split_bytes("train"), 64, 16, 1)))
    assert not torch.equal(other_seed.inputs, batches[0].inputs)
    # DDP: the shards of one step make up the whole batch
    shards = [next(iter(TrainWindows(text.split_bytes("train"), 64, 16, 0, 4, rank=r, world_size=2))) for r in (0, 1)]
    assert sorted(map(as_bytes, torch.cat([s.inputs for s in shards]))) == sorted(map(as_bytes, batches[4].inputs))
    # starts cover the split: the first and last windows can be drawn
    starts = torch.cat([TrainWindows(torch.zeros(70, dtype=torch.uint8), 64, 16, 0).starts(k) for k in range(20)])
    assert set(starts.tolist()) == set(range(6))


def test_eval_windows_are_fixed_evenly_spaced_and_inside_their_split(text):
    again = ByteText(seq_len=64, batch_size=16, eval_windows=20, val_fraction=0.1, test_fraction=0.05,
                     shuffle_seed=3)
    for split in ("train", "val", "test"):
        data = as_bytes(text.split_bytes(split))
        batch = text.splits[split]
        assert all(torch.equal(a, b) for a, b in zip(batch, again.splits[split]))
        assert batch.inputs.shape == (20, 64) and torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
        # starts evenly spaced from the split's first byte to its last window: i * (m - 65) / 19, rounded down
        positions = [int(i * (len(data) - 65) / 19) for i in range(20)]
        for position, x, y in zip(positions, batch.inputs, batch.targets):
            assert as_bytes(x) + as_bytes(y[-1:]) == data[position : position + 65]
        gaps = [b - a for a, b in zip(positions, positions[1:])]
        assert positions[-1] == len(data) - 65 and min(gaps) >= 65 and max(gaps) - min(gaps) <= 1  # non-overlapping
        if split != "train":  # probes of val and test: the first n evaluation windows
            assert all(torch.equal(a, b[:5]) for a, b in zip(text.examples(split, 5), batch))
    # probes of train: n windows evenly spaced over the whole split (its evaluation windows when n = eval_windows)
    assert all(torch.equal(a, b) for a, b in zip(text.examples("train", 20), text.splits["train"]))
    train = as_bytes(text.split_bytes("train"))
    for i, x in enumerate(text.examples("train", 5).inputs):
        start = i * (len(train) - 65) // 4
        assert as_bytes(x) == train[start : start + 64]
    chunks = list(ByteText(seq_len=64, eval_windows=20, eval_batch_size=8).eval_batches("val"))
    assert [len(c.targets) for c in chunks] == [8, 8, 4]
    assert len(text.examples("train", 100).targets) == 100  # probes beyond eval_windows, still fixed
    assert torch.equal(text.examples("train", 100).inputs, text.examples("train", 100).inputs)


def test_a_file_as_corpus_and_fewer_windows_than_asked(tmp_path):
    content = ("Zeile ü " * 200).encode("utf-8") + bytes(range(256))
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    dm = ByteText(path=str(path), seq_len=16, batch_size=4, eval_windows=64, val_fraction=0.1)
    info = dm.corpus_info()
    assert (info.name, info.size_bytes, info.python_version) == (str(path), len(content), None)
    assert info.sha256 == hashlib.sha256(content).hexdigest()[:16]
    assert as_bytes(dm.split_bytes("train")) + as_bytes(dm.split_bytes("val")) == content
    n_val = math.floor(0.1 * len(content))
    assert len(dm.splits["val"].targets) == n_val // 17 < 64  # as many as fit
    assert not dm.has_test and dm.split_names() == ("train", "val") and dm.splits["test"].inputs.shape == (0, 16)
    dm.setup()  # no trainer: stays on the CPU
    batch = next(iter(dm.train_dataloader()))
    assert batch.inputs.shape == (4, 16) and all(as_bytes(x) in content for x in batch.inputs)


def test_bad_path_and_too_short_splits_name_their_key(tmp_path):
    for bad in (tmp_path / "missing.txt", tmp_path):
        with pytest.raises(ConfigError) as error:
            ByteText(path=str(bad))
        assert error.value.key == "path" and "\n" not in str(error.value)
        assert str(error.value.under("data")).startswith("data.path=")
    short = tmp_path / "short.txt"
    short.write_bytes(b"x" * 1000)
    with pytest.raises(ConfigError) as error:
        ByteText(path=str(short), seq_len=256)  # val: 100 bytes < 257
    message = str(error.value.under("data"))
    assert error.value.key == "val_fraction" and message.startswith("data.val_fraction=") and "\n" not in message
    assert "100 bytes" in message and "data.seq_len" in message
    with pytest.raises(ConfigError) as error:
        ByteText(path=str(short), seq_len=50, test_fraction=0.01)  # test: 10 bytes
    assert error.value.key == "test_fraction" and "10 bytes" in str(error.value)
    with pytest.raises(ConfigError) as error:
        ByteText(path=str(short), seq_len=50, val_fraction=0.5, test_fraction=0.46)  # train: 40 bytes
    assert error.value.key == "seq_len" and "40 bytes" in str(error.value)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"path": ""}, "path"),
        ({"path": 3}, "path"),
        ({"seq_len": 0}, "seq_len"),
        ({"seq_len": 8.0}, "seq_len"),
        ({"batch_size": -1}, "batch_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_windows": 0}, "eval_windows"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": True}, "val_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "test_fraction"),
        ({"shuffle_seed": -1}, "shuffle_seed"),
    ],
)
def test_bad_arguments_name_their_key(kwargs, key):
    with pytest.raises(ConfigError) as error:
        ByteText(**kwargs)
    assert error.value.key == key
    message = str(error.value)
    assert message.startswith(f"{key}=") and "\n" not in message


def test_unigram_entropy_matches_an_independent_count(text, tmp_path):
    for split in ("train", "val"):
        data = as_bytes(text.split_bytes(split))
        counts = Counter(data)
        expected = -sum(c / len(data) * math.log2(c / len(data)) for c in counts.values())
        assert text.unigram_entropy_bits(split) == pytest.approx(expected, rel=1e-12)
    assert 3.0 < text.unigram_entropy_bits() < 6.0  # English-like text
    path = tmp_path / "same.txt"
    path.write_bytes(b"a" * 4000)
    assert ByteText(path=str(path), seq_len=8).unigram_entropy_bits() == 0.0
    path.write_bytes(bytes(range(256)) * 20)
    assert ByteText(path=str(path), seq_len=8, val_fraction=0.5).unigram_entropy_bits() == pytest.approx(8.0)
    with pytest.raises(ValueError):
        text.unigram_entropy_bits("nope")


def test_spec():
    dm = ByteText(seq_len=32)
    spec = dm.spec
    assert (spec.num_classes, spec.vocab_size, spec.seq_len, spec.input_kind) == (256, 256, 32, "tokens")
    assert spec.metrics == ("acc", "perplexity", "bits_per_byte") and spec.bytes_per_token == 1.0
    assert spec.decoding == "teacher_forced" and spec.group_names == ()
    assert isinstance(dm, Task) and datamodules.ByteText is ByteText
