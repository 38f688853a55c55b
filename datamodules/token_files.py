"""Tokenise once: a corpus's splits as token files on disk, read back as memory maps (`numpy.memmap`), so windows are
gathered from disk and the corpus is never held in memory, and a second run (or a resumed one) reads the same ids.

Where: `cache_root()`, the `cache_dir` setting, else $GROKKING_LAB_CACHE, else $XDG_CACHE_HOME/grokking-lab, else
~/.cache/grokking-lab: never the repository. Under it, `tokens/<key>/{train,val,test}.bin` (ids as uint16 when the
vocabulary fits, else uint32) and `meta.json` (dtype, tokens and bytes per split, the text's size and sha256), one
folder per (corpus, split settings, tokenizer): `tokens_key`. A folder is written under a temporary name and renamed
when whole, so a killed run leaves nothing half-written to reuse; two runs that race both build, and one rename wins.

Splits (no window can overlap two of them): a corpus of one document is cut contiguously (the first
1 - val_fraction - test_fraction of its characters are train, then val, then test, as `data=text` cuts bytes); a
corpus of several documents gives each whole document to one split, chosen by a hash of its name, so every split
draws from the whole corpus and a document's split never changes when others are added.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from datamodules.corpora import SEPARATOR, Corpus

SPLITS = ("train", "val", "test")
FORMAT = 1  # bump when the layout below changes
BATCH_CHARS = 4_000_000  # characters handed to the tokenizer at once (bounded memory for any corpus)


def cache_root(setting: str | None = None) -> Path:
    if setting:
        return Path(setting).expanduser()
    if env := os.environ.get("GROKKING_LAB_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "grokking-lab"


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def split_of(name: str, val_fraction: float, test_fraction: float) -> str:
    """The split a document belongs to, from a hash of its name (uniform in [0, 1))."""
    u = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    return "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"


def split_documents(corpus: Corpus, val_fraction: float, test_fraction: float) -> Iterator[tuple[str, str]]:
    """(split, text) of every document (or part of the one document) in corpus order; each text ends in SEPARATOR."""
    for name, text in corpus.documents():
        if corpus.single:
            n = len(text)
            n_val, n_test = math.floor(val_fraction * n), math.floor(test_fraction * n)
            cut = n - n_val - n_test
            parts = (("train", text[:cut]), ("val", text[cut:cut + n_val]), ("test", text[cut + n_val:]))
            yield from ((split, part + SEPARATOR) for split, part in parts if part)
        else:
            yield split_of(name, val_fraction, test_fraction), text + SEPARATOR


def split_key(val_fraction: float, test_fraction: float) -> str:
    return f"val={val_fraction!r},test={test_fraction!r}"


def tokens_key(corpus: Corpus, split: str, tokenizer_fingerprint: str) -> str:
    return hashlib.sha256(repr([corpus.source_key, split, tokenizer_fingerprint, FORMAT]).encode()).hexdigest()[:16]


@dataclass
class TokenFiles:
    """A corpus's splits as memory-mapped ids, and what was measured when they were written."""

    folder: Path
    meta: dict

    def tokens(self, split: str) -> np.ndarray:
        """(tokens,) the split's ids, memory-mapped read-only (an empty array for an empty split)."""
        if not self.meta["tokens"][split]:
            return np.zeros(0, dtype=self.meta["dtype"])
        return np.memmap(self.folder / f"{split}.bin", dtype=self.meta["dtype"], mode="r")


def token_files(root: Path, key: str, documents: Callable[[], Iterator[tuple[str, str]]], encode_batch,
                vocab_size: int, say=print) -> TokenFiles:
    """The token files of `key` under `root/tokens/`, written from `documents()` with `encode_batch` if absent."""
    folder = root / "tokens" / key
    if not (folder / "meta.json").exists():
        say(f"tokenising the corpus (once; cached in {folder})")
        write(folder, documents, encode_batch, vocab_size)
    return TokenFiles(folder, json.loads((folder / "meta.json").read_text()))


def write(folder: Path, documents, encode_batch, vocab_size: int) -> None:
    partial = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    dtype = dtype_for(vocab_size)
    files = {split: open(partial / f"{split}.bin", "wb") for split in SPLITS}
    counts, sizes = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0)
    digest, n_documents = hashlib.sha256(), 0
    pending: list[tuple[str, str]] = []

    def flush() -> None:
        for (split, _), ids in zip(pending, encode_batch([text for _, text in pending])):
            array = np.asarray(ids, dtype=np.int64)
            if len(array) and (array.min() < 0 or array.max() >= vocab_size):
                raise ValueError(f"the tokenizer gave ids outside 0..{vocab_size - 1}")
            files[split].write(array.astype(dtype).tobytes())
            counts[split] += len(array)
        pending.clear()

    try:
        chars = 0
        for split, text in documents():
            data = text.encode("utf-8")
            digest.update(data)
            sizes[split] += len(data)
            n_documents += 1
            pending.append((split, text))
            chars += len(text)
            if chars >= BATCH_CHARS:
                flush()
                chars = 0
        flush()
    finally:
        for file in files.values():
            file.close()
    meta = {"dtype": dtype.name, "vocab_size": vocab_size, "tokens": counts, "bytes": sizes,
            "size_bytes": sum(sizes.values()), "sha256": digest.hexdigest()[:16], "documents": n_documents,
            "format": FORMAT}
    (partial / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(partial, folder)
    except OSError:  # another run finished the same files first: theirs are as good
        shutil.rmtree(partial, ignore_errors=True)
