"""data=lm: corpora, tokenizers (a BPE trained once on the train split and reused; a pretrained one from a folder),
token files tokenised once and read back as memory maps, windows that a resumed run reads again exactly, splits that
share no document, and the byte counts bits per byte divide by."""
import hashlib
import importlib.metadata
import json
import random

import numpy as np
import pytest
import torch

import datamodules.subword
from core.errors import ConfigError
from datamodules import TokenText
from datamodules.corpora import PACKAGE, bundled_text
from datamodules.passes import passes_warning, warn_at_fit
from datamodules.token_text import TokenWindows

WORDS = ["alpha", "beta", "gamma", "delta", "grüße", "世界", "routing", "token", "softmax", "delta-net", "\t", "🙂"]


def write_documents(folder, n=30, seed=0):
    """n small text files of random words (non-ASCII included); {name: text}."""
    rng, docs = random.Random(seed), {}
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120))) + "\n"
        (folder / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
        docs[f"doc{i:02d}.txt"] = text
    return docs


def hash_split(name, val, test):
    """The split of a document, computed here from the documented rule (a sha256 of its name, uniform in [0, 1))."""
    u = int(hashlib.sha256(name.encode()).hexdigest()[:16], 16) / 2**64
    return "val" if u < val else "test" if u < val + test else "train"


class StubTrainer:
    """What the task reads of a Lightning trainer."""

    def __init__(self, global_step=0, max_steps=100, accumulate=1):
        self.global_step, self.max_steps, self.accumulate_grad_batches = global_step, max_steps, accumulate
        self.global_rank, self.world_size, self.is_global_zero = 0, 1, True
        self.strategy = type("Strategy", (), {"root_device": torch.device("cpu")})()


def test_a_folder_is_split_by_whole_documents_and_tokenised_to_memory_maps(tmp_path):
    docs = write_documents(tmp_path / "corpus")
    dm = TokenText(corpus="files", path=str(tmp_path / "corpus"), tokenizer="bytes", cache_dir=str(tmp_path / "c"),
                   seq_len=16, val_fraction=0.2, test_fraction=0.1, eval_windows=8)
    expected = {split: "".join(text + "\n\n" for name, text in sorted(docs.items())
                               if hash_split(name, 0.2, 0.1) == split) for split in ("train", "val", "test")}
    assert all(expected.values())  # every split got documents (30 documents, fractions 0.7 / 0.2 / 0.1)
    for split, text in expected.items():
        tokens = dm.tokens[split]
        assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16  # read from disk, ids as uint16
        assert bytes(tokens.tolist()) == text.encode("utf-8")  # exactly its documents, in corpus order
    info = dm.corpus_info()
    stream = "".join(text + "\n\n" for _, text in sorted(docs.items())).encode("utf-8")
    assert info.size_bytes == len(stream) and info.documents == 30 and info.tokenizer == "bytes"
    assert info.tokens == {split: len(text.encode("utf-8")) for split, text in expected.items()}
    # the corpus's sha256: of the documents as tokenised, in split order within corpus order
    assert info.sha256 == hashlib.sha256(b"".join(
        (text + "\n\n").encode() for _, text in sorted(docs.items()))).hexdigest()[:16]


def test_one_document_is_cut_contiguously(tmp_path):
    dm = TokenText(corpus="bundled", tokenizer="bytes", cache_dir=str(tmp_path), seq_len=32, val_fraction=0.1,
                   test_fraction=0.05)
    text = bundled_text()
    n = len(text)
    n_val, n_test = int(0.1 * n), int(0.05 * n)
    parts = {"train": text[:n - n_val - n_test], "val": text[n - n_val - n_test:n - n_test], "test": text[n - n_test:]}
    for split, part in parts.items():
        assert bytes(dm.tokens[split].tolist()) == (part + "\n\n").encode("utf-8")
    assert dm.corpus_info().name == "pydoc_data" and dm.corpus_info().documents is None


def test_the_bpe_is_trained_once_on_the_train_split_and_reused(tmp_path, monkeypatch):
    pytest.importorskip("tokenizers", reason="the BPE needs the `lm` extra: pip install -e '.[lm]'")
    docs = write_documents(tmp_path / "corpus")
    calls = []
    real = datamodules.subword.train_bpe

    def spy(texts, vocab_size, min_frequency):
        texts = list(texts)
        calls.append((texts, vocab_size))
        return real(iter(texts), vocab_size, min_frequency)

    monkeypatch.setattr(datamodules.subword, "train_bpe", spy)

    def make(vocab_size=300, folder="corpus"):
        return TokenText(corpus="files", path=str(tmp_path / folder), tokenizer="bpe", vocab_size=vocab_size,
                         cache_dir=str(tmp_path / "cache"), seq_len=16, val_fraction=0.2, eval_windows=4)

    first = make()
    assert len(calls) == 1
    trained_on, _ = calls[0]
    train_docs = [text + "\n\n" for name, text in sorted(docs.items()) if hash_split(name, 0.2, 0.0) == "train"]
    assert trained_on == train_docs  # the train split only, in corpus order
    assert first.tokenizer.vocab_size == 300 == first.spec.vocab_size == first.spec.num_classes
    second = make()
    assert len(calls) == 1  # a second run reuses the cached tokenizer (and token files)
    assert second.tokenizer.fingerprint == first.tokenizer.fingerprint
    assert np.array_equal(second.tokens["train"], first.tokens["train"])
    make(vocab_size=320)
    assert len(calls) == 2 and calls[1][1] == 320  # other settings: another tokenizer
    write_documents(tmp_path / "other", seed=1)
    other = make(folder="other")
    assert len(calls) == 3 and other.tokenizer.fingerprint != first.tokenizer.fingerprint  # another corpus: another
    cached = sorted(p.name for p in (tmp_path / "cache" / "tokenizers").iterdir())
    assert len(cached) == 3 and all(name.startswith("bpe-") for name in cached)


def test_token_bytes_count_the_text_exactly_and_ids_decode_back(tmp_path):
    pytest.importorskip("tokenizers", reason="the BPE needs the `lm` extra: pip install -e '.[lm]'")
    from tokenizers import pre_tokenizers

    from datamodules.subword import byte_level_alphabet

    alphabet = byte_level_alphabet()  # the characters Hugging Face's byte-level BPE writes for the 256 bytes
    assert sorted(alphabet) == sorted(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(alphabet.values()) == list(range(256))
    write_documents(tmp_path / "corpus")
    every_char = "".join(chr(c) for c in range(1, 0x250)) * 3  # every control byte, Latin-1 and beyond (2 bytes each)
    (tmp_path / "corpus" / "zz_every_character.txt").write_text(every_char, encoding="utf-8")
    dm = TokenText(corpus="files", path=str(tmp_path / "corpus"), tokenizer="bpe", vocab_size=300,
                   cache_dir=str(tmp_path / "cache"), seq_len=16, val_fraction=0.2, eval_windows=4)
    token_bytes = np.array(dm.token_bytes)
    assert token_bytes.shape == (300,) and token_bytes.min() >= 1  # no special tokens in this vocabulary
    meta = json.loads((dm.files.folder / "meta.json").read_text())
    for split in ("train", "val"):
        ids = np.asarray(dm.tokens[split], dtype=np.int64)
        assert token_bytes[ids].sum() == meta["bytes"][split]  # every byte of the split, counted once
        assert len(ids) < meta["bytes"][split]  # sub-words: fewer ids than bytes
    window = dm.splits["val"].inputs[0]
    assert dm.text_of(window).encode("utf-8") == b"".join(
        dm.tokenizer.decode([i]).encode("utf-8") for i in window.tolist()) or "\ufffd" in dm.text_of(window)


def test_a_pretrained_tokenizer_loads_from_a_local_folder(tmp_path):
    pytest.importorskip("transformers", reason="pretrained tokenizers need the `lm` extra: pip install -e '.[lm]'")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from datamodules.subword import train_bpe

    docs = write_documents(tmp_path / "corpus")
    backend = train_bpe(iter(docs.values()), 280, 2)
    folder = tmp_path / "tok"
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|eos|>").save_pretrained(str(folder))
    dm = TokenText(corpus="files", path=str(tmp_path / "corpus"), tokenizer="pretrained", pretrained=str(folder),
                   cache_dir=str(tmp_path / "cache"), seq_len=16, val_fraction=0.2, eval_windows=4)
    reference = AutoTokenizer.from_pretrained(str(folder))
    assert dm.spec.vocab_size == len(reference) == 281  # the BPE's 280 and the added end-of-text token
    eos = reference.convert_tokens_to_ids("<|eos|>")
    assert dm.token_bytes[eos] == 0  # a special token stands for no text
    train = [text + "\n\n" for name, text in sorted(docs.items()) if hash_split(name, 0.2, 0.0) == "train"]
    expected = [i for text in train for i in reference(text, add_special_tokens=False)["input_ids"]]
    assert dm.tokens["train"].tolist() == expected
    assert np.array(dm.token_bytes)[expected].sum() == sum(len(t.encode()) for t in train)
    assert dm.corpus_info().tokenizer == f"pretrained {folder}"


@pytest.mark.parametrize("streaming", [True, False])
def test_a_hugging_face_dataset_made_here_loads_through_datasets(tmp_path, monkeypatch, streaming):
    pytest.importorskip("datasets", reason="Hugging Face datasets need the `lm` extra: pip install -e '.[lm]'")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing written outside the test's folder
    rows = [{"id": i, "body": f"row {i}: " + " ".join(random.Random(i).choice(WORDS) for _ in range(30))}
            for i in range(40)]
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    hf = {"name": str(folder), "split": "train", "text_field": "body", "streaming": streaming}
    dm = TokenText(corpus="hf", hf=hf, tokenizer="bytes", cache_dir=str(tmp_path / "c"), seq_len=16,
                   val_fraction=0.2, eval_windows=4)
    for split in ("train", "val"):
        expected = "".join(row["body"] + "\n\n" for i, row in enumerate(rows)
                           if hash_split(f"train/{i}", 0.2, 0.0) == split)
        assert bytes(dm.tokens[split].tolist()).decode() == expected
    info = dm.corpus_info()
    assert info.name == f"hf:{folder}:train" and info.documents == 40
    with pytest.raises(ConfigError, match=r"hf\.text_field='text' is not allowed: expected a column of .*body"):
        TokenText(corpus="hf", hf={**hf, "text_field": "text"}, tokenizer="bytes", cache_dir=str(tmp_path / "c2"))


def test_the_package_corpus_reads_a_pinned_installed_distribution(tmp_path, monkeypatch):
    version = importlib.metadata.version("omegaconf")  # a core dependency: installed wherever the suite runs
    dm = TokenText(corpus="package", package={"name": "omegaconf", "version": version, "suffixes": [".py"]},
                   tokenizer="bytes", cache_dir=str(tmp_path), seq_len=64, val_fraction=0.2, eval_windows=4)
    files = sorted(str(f) for f in importlib.metadata.distribution("omegaconf").files
                   if str(f).endswith(".py") and ".dist-info/" not in str(f))
    info = dm.corpus_info()
    assert info.name == f"omegaconf=={version}" and info.documents == len(files) > 10
    with pytest.raises(ConfigError, match=rf"package\.version='0\.0\.1' is not allowed: .*installed version of "
                                          rf"omegaconf, {version}"):
        TokenText(corpus="package", package={"name": "omegaconf", "version": "0.0.1"}, cache_dir=str(tmp_path))
    real = importlib.metadata.distribution

    def missing(name):
        if name == PACKAGE.name:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ConfigError, match=r"package\.name='ansible' is not allowed: expected an installed "
                                          r"distribution: pip install -e '\.\[lm-corpus\]'"):
        TokenText(corpus="package", cache_dir=str(tmp_path))


def test_windows_are_read_from_the_token_files_and_a_resumed_run_reads_the_same(tmp_path):
    dm = TokenText(corpus="bundled", tokenizer="bytes", cache_dir=str(tmp_path), seq_len=24, batch_size=6,
                   eval_windows=10, val_fraction=0.1, shuffle_seed=3)
    train = np.asarray(dm.tokens["train"], dtype=np.int64)
    loader = TokenWindows(dm.tokens["train"], 24, 6, 3)
    stream = iter(loader)
    uninterrupted = [next(stream) for _ in range(8)]
    for step, batch in enumerate(uninterrupted):
        starts = loader.starts(step)
        for row, start in enumerate(starts):
            assert batch.inputs[row].tolist() == train[start:start + 24].tolist()
            assert batch.targets[row].tolist() == train[start + 1:start + 25].tolist()
    assert not torch.equal(uninterrupted[0].inputs, uninterrupted[1].inputs)
    dm.trainer = StubTrainer(global_step=5)  # what Lightning has restored when it asks for the loader again
    resumed = iter(dm.train_dataloader())
    for step in range(5, 8):
        again = next(resumed)
        assert torch.equal(again.inputs, uninterrupted[step].inputs)
        assert torch.equal(again.targets, uninterrupted[step].targets)
    halves = [next(iter(TokenWindows(dm.tokens["train"], 24, 6, 3, 2, rank, 2))) for rank in (0, 1)]
    assert torch.equal(torch.cat([halves[0].inputs[0:1], halves[1].inputs[0:1]]), uninterrupted[2].inputs[0:2])
    # the fixed evaluation windows: evenly spaced, non-overlapping, inside their split, the same in a new task
    val = np.asarray(dm.tokens["val"], dtype=np.int64)
    windows = dm.splits["val"].inputs
    starts = [i * (len(val) - 25) // 9 for i in range(10)]  # evenly spaced from the split's first token to its last
    assert len(windows) == 10 and all(b - a >= 25 for a, b in zip(starts, starts[1:]))
    assert [w.tolist() for w in windows] == [val[s:s + 24].tolist() for s in starts]
    again = TokenText(corpus="bundled", tokenizer="bytes", cache_dir=str(tmp_path), seq_len=24, batch_size=6,
                      eval_windows=10, val_fraction=0.1, shuffle_seed=3)
    assert torch.equal(again.splits["val"].inputs, windows)


def test_a_run_that_passes_many_times_over_its_text_says_so(tmp_path, capsys):
    message = passes_warning(419_646, 1000, 48 * 1024, 4.0)
    assert "pass 117.1 times over the 419,646 training tokens (more than 4)" in message
    assert passes_warning(60_000_000, 1000, 48 * 1024, 4.0) is None  # under a pass: silent
    assert passes_warning(1000, 4, 1000, 4.0) is None  # exactly the limit: silent
    dm = TokenText(corpus="bundled", tokenizer="bytes", cache_dir=str(tmp_path), seq_len=64, batch_size=32,
                   val_fraction=0.1, warn_passes=2)
    capsys.readouterr()  # what tokenising printed
    dm.trainer = StubTrainer(max_steps=1000, accumulate=2)
    dm.setup("fit")
    printed = capsys.readouterr().out
    passes = 1000 * 32 * 64 * 2 / len(dm.tokens["train"])
    assert f"pass {passes:.1f} times" in printed and printed.startswith("[grokking-lab] warning:")
    dm.trainer = StubTrainer(max_steps=10)
    dm.setup("fit")
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("kwargs, key", [
    ({"tokenizer": "words"}, "tokenizer"), ({"vocab_size": 200}, "vocab_size"), ({"corpus": "web"}, "corpus"),
    ({"corpus": "files", "path": "/no/such/folder"}, "path"), ({"corpus": "files"}, "path"),
    ({"corpus": "hf"}, "hf.name"), ({"tokenizer": "pretrained"}, "pretrained"), ({"seq_len": 10**7}, "val_fraction"),
    ({"val_fraction": 0.6, "test_fraction": 0.5}, "test_fraction"), ({"warn_passes": 0}, "warn_passes"),
])
def test_bad_settings_name_their_key(tmp_path, kwargs, key):
    with pytest.raises(ConfigError) as err:
        TokenText(**{"corpus": "bundled", "tokenizer": "bytes", "cache_dir": str(tmp_path), **kwargs})
    assert err.value.key == key


def test_warn_at_fit_stays_quiet_off_rank_zero(capsys):
    trainer = StubTrainer(max_steps=10**6)
    trainer.is_global_zero = False
    warn_at_fit(trainer, 100, 10, 10, 4.0)
    warn_at_fit(None, 100, 10, 10, 4.0)
    assert capsys.readouterr().out == ""
