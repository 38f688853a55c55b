"""Tokenizers of a language model's text (`data.tokenizer`): bytes, a byte-level BPE trained here, or a pretrained one.

    bytes       a text's UTF-8 bytes are its ids (datamodules.byte_tokenizer): vocabulary 256
    bpe         a byte-level BPE (Hugging Face `tokenizers`) trained on the training split only, at `vocab_size`;
                saved under the cache folder keyed by the corpus, the split and the settings, so a second run reuses
                it (`bpe_key`)
    pretrained  `transformers.AutoTokenizer.from_pretrained(name)`: a local tokenizer folder, or a hub name online

Every tokenizer also says how many bytes of text each id stands for (`token_bytes`), so bits per byte is the loss
summed over a window divided by the bytes the window's targets cover, whatever the vocabulary. For byte-level
vocabularies (bytes, bpe, GPT-2-style pretrained ones) that count is exact: decoding concatenates each id's bytes. For
SentencePiece-style ones ("▁" for a space, "<0xNN>" byte pieces) it is exact up to the space a tokenizer adds in front
of a text. Special tokens cover no bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np

from core.errors import ConfigError, require

TOKENIZERS = ("bytes", "bpe", "pretrained")
BPE_FORMAT = 1  # bump when the BPE recipe below changes, so older cached tokenizers are not reused


class TextTokenizer(Protocol):
    name: str  # what summary.json records: "bytes", "bpe 8192 (<key>)", "pretrained gpt2"
    fingerprint: str  # identifies the mapping text -> ids (token caches are keyed by it)
    vocab_size: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def token_bytes(self) -> np.ndarray: ...


def byte_level_alphabet() -> dict[str, int]:
    """The printable character a byte-level BPE writes for each byte (GPT-2's convention, which Hugging Face's
    ByteLevel pre-tokenizer follows): bytes that are printable Latin-1 stand for themselves, the others (controls,
    space, a few more) are given the characters from U+0100 on, in byte order. Returns character -> byte."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {byte: chr(byte) for byte in kept}
    shifted = (byte for byte in range(256) if byte not in mapping)
    mapping |= {byte: chr(256 + i) for i, byte in enumerate(shifted)}
    return {char: byte for byte, char in mapping.items()}


def piece_bytes(piece: str, byte_level: bool, alphabet: dict[str, int]) -> int:
    """Bytes of text a vocabulary entry stands for (see the module docstring)."""
    if byte_level and all(char in alphabet for char in piece):
        return len(piece)
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece byte fallback
        return 1
    return len(piece.replace("▁", " ").encode("utf-8"))


class BytesTokenizer:
    name = fingerprint = "bytes"
    vocab_size = 256

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        return np.ones(256, dtype=np.int64)


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` (the BPE trained here, or a pretrained fast tokenizer's backend)."""

    def __init__(self, tokenizer, name: str, fingerprint: str, special_ids: Iterable[int] = ()):
        self.tokenizer, self.name, self.fingerprint = tokenizer, name, fingerprint
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.special_ids = set(special_ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        byte_level = "ByteLevel" in self.tokenizer.to_str()
        alphabet = byte_level_alphabet()
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for piece, index in self.tokenizer.get_vocab(with_added_tokens=True).items():
            if index < self.vocab_size and index not in self.special_ids:
                counts[index] = piece_bytes(piece, byte_level, alphabet)
        return counts


def bpe_key(corpus_key: str, split_key: str, vocab_size: int, min_frequency: int) -> str:
    """What a trained BPE depends on: the corpus, which documents are train, the settings, the recipe, the library."""
    import tokenizers

    parts = [corpus_key, split_key, vocab_size, min_frequency, BPE_FORMAT, tokenizers.__version__]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def train_bpe(texts: Iterator[str], vocab_size: int, min_frequency: int):
    """A byte-level BPE (every byte in the alphabet, so any text encodes) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def cached_bpe(folder: Path, key: str, train_texts, vocab_size: int, min_frequency: int,
               say=print) -> HFTokenizer:
    """The BPE of `key` from `folder/bpe-<key>/tokenizer.json`, trained on `train_texts()` and saved there if absent."""
    from tokenizers import Tokenizer

    path = folder / f"bpe-{key}" / "tokenizer.json"
    if not path.exists():
        say(f"training a byte-level BPE of {vocab_size} tokens on the train split (once; cached in {path.parent})")
        tokenizer = train_bpe(train_texts(), vocab_size, min_frequency)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".tmp-{os.getpid()}")
        tokenizer.save(str(partial))
        (path.parent / "settings.json").write_text(json.dumps({"vocab_size": vocab_size, "min_frequency":
                                                               min_frequency, "format": BPE_FORMAT}))
        os.replace(partial, path)  # whole or absent: a run killed while saving leaves nothing to reuse
    tokenizer = Tokenizer.from_file(str(path))
    return HFTokenizer(tokenizer, f"bpe {tokenizer.get_vocab_size()} ({key})", f"bpe:{key}")


def pretrained(name: str) -> HFTokenizer:
    """A pretrained tokenizer through `transformers.AutoTokenizer` (a fast one: its Rust backend encodes)."""
    require(isinstance(name, str) and name != "", "pretrained", name,
            "a local tokenizer folder or a hub name (with tokenizer=pretrained)", related=["tokenizer"])
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError("tokenizer", "pretrained", "an installed `transformers` (pip install -e '.[lm]')") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ConfigError("pretrained", name, f"a tokenizer AutoTokenizer can load ({str(err).splitlines()[0]})") \
            from None
    require(getattr(tokenizer, "is_fast", False), "pretrained", name, "a tokenizer with a fast (Rust) backend")
    backend = tokenizer.backend_tokenizer
    fingerprint = "pretrained:" + hashlib.sha256(backend.to_str().encode()).hexdigest()[:16]
    return HFTokenizer(backend, f"pretrained {name}", fingerprint, special_ids=tokenizer.all_special_ids)
