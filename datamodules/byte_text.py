"""Byte-level language modelling: predict every next byte of a text (`datamodules.byte_tokenizer`: ids 0..255).

Why: a task whose whole output is judged, not a few answer positions, so a net's language-modelling ability is
measured in bits per byte (loss / ln 2), comparable across tokenizer-free runs and against the text's byte unigram
entropy (`unigram_entropy_bits`: what a net that ignores context reaches).

Corpus: `path: null` is the text of Python's own documentation topics, the standard-library module
`pydoc_data.topics` (its `topics` values joined in sorted-key order with blank lines, encoded UTF-8): on every
machine that has Python, nothing to download. That text differs slightly between Python versions, so
`corpus_info()` records which one a run trained on (size, sha256, Python version). `path: <file>` reads any file as
raw bytes (byte level: no decoding, any encoding or binary works).

Splits are contiguous: the first 1 - val_fraction - test_fraction of the bytes are train, then val, then test, so no
evaluation window shares text with the training stream (only the split boundary's context is cut).

    window    b_s .. b_{s+seq_len}          (seq_len + 1 bytes from one split)
    inputs    b_s .. b_{s+seq_len-1}        (window[:-1], T = seq_len)
    targets   b_{s+1} .. b_{s+seq_len}      (window[1:]: target j is predicted from inputs <= j)
    loss_mask / answer_mask all ones / True, group 0 (every byte counts)

A run that would pass more than `warn_passes` times over the train split says so at the start of training
(datamodules.passes): at the hybrid-LM study's seed size this text is read ~117 times (use `data=lm`).

Training: each step `batch_size` windows at uniformly random starts in the train split, step k's starts a pure
function of (shuffle_seed, k), so a resumed run sees exactly the batches an uninterrupted one would; the bytes sit on
the training device (moved once in `setup`) and windows are gathered by index arithmetic.
Evaluation: per split a fixed set of `eval_windows` windows at evenly spaced, non-overlapping starts (the first at the
split's first byte), built once; a split too short for that many holds as many as fit (at least one, or the
settings are refused). `train` has such a fixed sample too, for train metrics in the final numbers.
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
from typing import Iterator

import torch
from torch import Tensor

from core.errors import ConfigError, require
from datamodules.batch import Batch, TaskSpec
from datamodules.byte_tokenizer import VOCAB_SIZE, decode
from datamodules.corpora import BUNDLED, CorpusInfo, bundled_text
from datamodules.digit_addition import is_int, mix_seed
from datamodules.in_memory import InMemoryTask
from datamodules.loaders import generator_on, take
from datamodules.passes import warn_at_fit

SPLITS = ("train", "val", "test")


def bundled_corpus() -> bytes:
    """The text of Python's documentation topics (`pydoc_data.topics`), values in sorted-key order, UTF-8."""
    return bundled_text().encode("utf-8")


def read_corpus(path: str | os.PathLike | None) -> tuple[bytes, CorpusInfo]:
    """The corpus bytes and what they are: the bundled text (`path` None) or the file's raw bytes."""
    if path is None:
        data, name = bundled_corpus(), BUNDLED
        version = ".".join(str(part) for part in sys.version_info[:3])
    else:
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as err:
            raise ConfigError("path", str(path), f"null (the bundled {BUNDLED} text) or a readable file "
                                                  f"({err.strerror or type(err).__name__})") from None
        name, version = str(path), None
    return data, CorpusInfo(name, len(data), hashlib.sha256(data).hexdigest()[:16], version, tokenizer="bytes")


def evenly_spaced_starts(size: int, length: int, count: int, device: torch.device | None = None) -> Tensor:
    """Starts of min(count, size // length) non-overlapping windows of `length` in `size` bytes, evenly spaced from
    the first byte to the last window that fits (consecutive starts differ by >= (size - length) // (count - 1),
    which is >= length when count <= size // length)."""
    count = min(count, size // length)
    if count <= 0:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.arange(count, dtype=torch.long, device=device) * (size - length) // max(count - 1, 1)


def windows(data: Tensor, starts: Tensor, seq_len: int) -> Batch:
    """The batch of the windows of `seq_len + 1` bytes of `data` at `starts` (both on one device)."""
    index = starts[:, None] + torch.arange(seq_len + 1, device=data.device)
    window = data[index].long()
    n = len(starts)
    return Batch(window[:, :-1].contiguous(), window[:, 1:].contiguous(),
                 torch.ones(n, seq_len, device=data.device), torch.ones(n, seq_len, dtype=torch.bool, device=data.device),
                 torch.zeros(n, dtype=torch.long, device=data.device))


def entropy_bits(data: Tensor) -> float:
    """Entropy in bits of the byte histogram of `data`."""
    counts = torch.bincount(data.long().flatten().cpu(), minlength=VOCAB_SIZE).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum()) + 0.0  # + 0.0: no -0.0 for a one-byte text


class ByteText(InMemoryTask):
    def __init__(
        self,
        path: str | None = None,
        seq_len: int = 256,
        batch_size: int = 32,
        eval_windows: int = 64,
        eval_batch_size: int = -1,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        shuffle_seed: int = 0,
        warn_passes: float = 4.0,
    ):
        super().__init__()
        self._validate(path, seq_len, batch_size, eval_windows, eval_batch_size, val_fraction, test_fraction,
                       shuffle_seed)
        require(isinstance(warn_passes, (int, float)) and not isinstance(warn_passes, bool) and warn_passes > 0,
                "warn_passes", warn_passes, "a positive number of passes over the train split")
        self.seq_len, self.eval_windows, self.warn_passes = seq_len, eval_windows, float(warn_passes)
        self.batch_size, self.eval_batch_size, self.shuffle_seed = batch_size, eval_batch_size, shuffle_seed
        data, self.info = read_corpus(path)
        self.corpus = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        self.bounds = self._bounds(len(data), val_fraction, test_fraction)
        self.splits = {name: self._fixed_windows(name, eval_windows) for name in SPLITS}

    def _bounds(self, n: int, val_fraction: float, test_fraction: float) -> dict[str, tuple[int, int]]:
        """[start, end) of each split in the corpus; each that holds data holds at least one window."""
        n_val, n_test = math.floor(val_fraction * n), math.floor(test_fraction * n)
        n_train = n - n_val - n_test
        length = self.seq_len + 1
        source = f"{self.info.name}, {n} bytes"
        require(n_val >= length, "val_fraction", val_fraction,
                f"a fraction whose split holds a window of seq_len + 1 = {length} bytes, or a smaller seq_len "
                f"(val is {n_val} bytes of {source})", related=["seq_len"])
        require(n_test == 0 or n_test >= length, "test_fraction", test_fraction,
                f"0, or a fraction whose split holds a window of seq_len + 1 = {length} bytes "
                f"(test is {n_test} bytes of {source})", related=["seq_len"])
        require(n_train >= length, "seq_len", self.seq_len,
                f"at most {n_train - 1}: the train split (1 - val_fraction - test_fraction of {source}) is "
                f"{n_train} bytes", related=["val_fraction", "test_fraction"])
        return {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}

    @staticmethod
    def _validate(path, seq_len, batch_size, eval_windows, eval_batch_size, val_fraction, test_fraction,
                  shuffle_seed) -> None:
        require(path is None or (isinstance(path, (str, os.PathLike)) and str(path) != ""), "path", path,
                f"null (the bundled {BUNDLED} text) or the path of a file")
        require(is_int(seq_len) and seq_len >= 1, "seq_len", seq_len, "a positive integer (bytes per window)")
        require(is_int(batch_size) and batch_size >= 1, "batch_size", batch_size,
                "a positive integer (windows per step: a stream has no full batch)")
        require(is_int(eval_windows) and eval_windows >= 1, "eval_windows", eval_windows, "a positive integer")
        require(is_int(eval_batch_size) and (eval_batch_size == -1 or eval_batch_size > 0), "eval_batch_size",
                eval_batch_size, "-1 (a split's windows at once) or a positive integer")
        number = (int, float)
        require(isinstance(val_fraction, number) and not isinstance(val_fraction, bool) and 0 < val_fraction < 1,
                "val_fraction", val_fraction, "a number in (0, 1)")
        require(isinstance(test_fraction, number) and not isinstance(test_fraction, bool) and 0 <= test_fraction < 1,
                "test_fraction", test_fraction, "a number in [0, 1)")
        key = "test_fraction" if test_fraction > 0 else "val_fraction"
        require(val_fraction + test_fraction < 1, key, val_fraction if key == "val_fraction" else test_fraction,
                f"val_fraction + test_fraction < 1, the rest being train ({val_fraction:g} + {test_fraction:g})",
                related=["val_fraction", "test_fraction"])
        require(is_int(shuffle_seed) and shuffle_seed >= 0, "shuffle_seed", shuffle_seed, "a non-negative integer")

    def setup(self, stage: str | None = None) -> None:
        """Move the corpus and the fixed evaluation windows to the training device once."""
        super().setup(stage)
        self.corpus = self.corpus.to(next(iter(self.splits.values())).inputs.device)
        if stage in (None, "fit"):
            warn_at_fit(self.trainer, len(self.split_bytes("train")), self.batch_size, self.seq_len, self.warn_passes,
                        self.eval_windows, self.splits)

    def split_bytes(self, split: str) -> Tensor:
        """(bytes,) uint8: the split's part of the corpus (a view, on the corpus's device)."""
        if split not in self.bounds:
            raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        start, end = self.bounds[split]
        return self.corpus[start:end]

    def _fixed_windows(self, split: str, count: int) -> Batch:
        data = self.split_bytes(split)
        return windows(data, evenly_spaced_starts(len(data), self.seq_len + 1, count, data.device), self.seq_len)

    def train_dataloader(self) -> "TrainWindows":
        # Lightning asks for it after restoring a checkpoint, so global_step is the step to resume from
        first_step = self.trainer.global_step if self.trainer is not None else 0
        return TrainWindows(self.split_bytes("train"), self.seq_len, self.batch_size, self.shuffle_seed, first_step,
                            *self._ranks())

    def examples(self, split: str, n: int) -> Batch:
        """The same n windows every time: for `train` n evenly spaced windows of the train split (as many as fit),
        for `val` and `test` the first n of the fixed evaluation windows (at most `eval_windows`)."""
        if split == "train":
            return self._fixed_windows("train", n)
        return take(self.splits[split], slice(0, n))

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(num_classes=VOCAB_SIZE, vocab_size=VOCAB_SIZE, seq_len=self.seq_len, input_kind="tokens",
                        metrics=("acc", "perplexity", "bits_per_byte"), bytes_per_token=1.0)

    def corpus_info(self) -> CorpusInfo:
        """Which text this is: name, size in bytes, sha256 (16 hex digits), the Python version of pydoc_data."""
        return self.info

    def unigram_entropy_bits(self, split: str = "train") -> float:
        """The byte unigram entropy of the split in bits per byte: the bits_per_byte of the best net that ignores
        context (on its own split; on another split the cross-entropy is at least the other's entropy)."""
        data = self.split_bytes(split)
        if not len(data):
            raise ValueError(f"split {split!r} holds no bytes")
        return entropy_bits(data)

    @staticmethod
    def text_of(ids: Tensor) -> str:
        """The text of byte ids (a window, a row of inputs or of predictions), invalid UTF-8 shown as U+FFFD."""
        return decode(ids)


class TrainWindows:
    """Endless batches of `batch_size` windows at random starts in `data`; step k's starts depend on
    (shuffle_seed, k) only (drawn on the data's device, so nothing is copied from the host; the same on every
    process), under DDP each process its share."""

    full_batch = False  # every step is a new sample (there is no whole split to serve)

    def __init__(self, data: Tensor, seq_len: int, batch_size: int, shuffle_seed: int, first_step: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.data, self.seq_len, self.batch_size, self.shuffle_seed = data, seq_len, batch_size, shuffle_seed
        self.first_step = first_step  # the index of the first batch served (the restored step on resume)
        self.rank, self.world_size = rank, world_size

    def starts(self, step: int) -> Tensor:
        """(batch_size,) the window starts of batch `step`, uniform over every window of the split (on the data's
        device)."""
        device = self.data.device
        return torch.randint(0, len(self.data) - self.seq_len, (self.batch_size,), device=device,
                             generator=generator_on(device, mix_seed(self.shuffle_seed, step)))

    def __iter__(self) -> Iterator[Batch]:
        step = self.first_step
        while True:
            starts = self.starts(step)[self.rank :: self.world_size]
            yield windows(self.data, starts, self.seq_len)
            step += 1
