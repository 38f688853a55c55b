"""Language modelling on any corpus with any tokenizer (`data=lm`): the hybrid-LM study at the seed's size.

What `data=text` does for bytes held in memory, this does for token ids on disk: the corpus (datamodules.corpora) is
split, the tokenizer (datamodules.subword: bytes, a BPE trained on the train split, or a pretrained one) encodes each
split once into memory-mapped token files (datamodules.token_files), and windows are read from those files:

    window    t_s .. t_{s+seq_len}          (seq_len + 1 ids from one split)
    inputs    window[:-1], targets window[1:]; every position counts (loss and answer masks all ones)

Training: each step `batch_size` windows at uniformly random starts in the train split, step k's starts a pure
function of (shuffle_seed, k) drawn on the host (where the files are), so a resumed run reads exactly the windows an
uninterrupted one would; the ids of one step are gathered from the memory map and handed to the device.
Evaluation: per split `eval_windows` fixed, evenly spaced, non-overlapping windows (as many as fit), read once.
Bits per byte divide the summed loss by the bytes the targets stand for (`TaskSpec.token_bytes`), so runs with
different tokenizers read on one scale; `val/loss` and `val/perplexity` are per token.

At the start of training a run that would pass more than `warn_passes` times over its training tokens says so.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from core.errors import require
from datamodules.batch import Batch, TaskSpec
from datamodules.byte_text import evenly_spaced_starts
from datamodules.corpora import CorpusInfo, open_corpus
from datamodules.digit_addition import is_int, mix_seed
from datamodules.in_memory import InMemoryTask
from datamodules.loaders import take, to_device
from datamodules.passes import warn_at_fit
from datamodules.subword import TOKENIZERS, BytesTokenizer, bpe_key, cached_bpe, pretrained
from datamodules.token_files import SPLITS, TokenFiles, cache_root, split_documents, split_key, token_files, tokens_key

SAY_PREFIX = "[grokking-lab] "


def say(message: str) -> None:
    print(SAY_PREFIX + message, flush=True)


def windows_of(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> Batch:
    """The batch of the windows of `seq_len + 1` ids of `tokens` (a memory map) at `starts`, on the host."""
    index = starts[:, None] + np.arange(seq_len + 1)
    window = torch.from_numpy(tokens[index].astype(np.int64))
    n = len(starts)
    return Batch(window[:, :-1].contiguous(), window[:, 1:].contiguous(), torch.ones(n, seq_len),
                 torch.ones(n, seq_len, dtype=torch.bool), torch.zeros(n, dtype=torch.long))


class TokenText(InMemoryTask):
    def __init__(
        self,
        corpus: str = "bundled",
        path: str | None = None,
        hf: dict | None = None,
        package: dict | None = None,
        tokenizer: str = "bpe",
        vocab_size: int = 8192,
        min_frequency: int = 2,
        pretrained: str | None = None,
        cache_dir: str | None = None,
        seq_len: int = 256,
        batch_size: int = 32,
        eval_windows: int = 64,
        eval_batch_size: int = -1,
        val_fraction: float = 0.01,
        test_fraction: float = 0.0,
        shuffle_seed: int = 0,
        warn_passes: float = 4.0,
    ):
        super().__init__()
        self._validate(tokenizer, vocab_size, min_frequency, seq_len, batch_size, eval_windows, eval_batch_size,
                       val_fraction, test_fraction, shuffle_seed, warn_passes)
        self.seq_len, self.eval_windows, self.warn_passes = seq_len, eval_windows, float(warn_passes)
        self.batch_size, self.eval_batch_size, self.shuffle_seed = batch_size, eval_batch_size, shuffle_seed
        hf, package = _plain(hf), _plain(package)
        self.source = open_corpus(corpus, path, hf, package)
        root = cache_root(cache_dir)
        splitting = split_key(val_fraction, test_fraction)

        def documents():
            return split_documents(self.source, val_fraction, test_fraction)

        self.tokenizer = self._tokenizer(tokenizer, vocab_size, min_frequency, pretrained, root, splitting, documents)
        key = tokens_key(self.source, splitting, self.tokenizer.fingerprint)
        self.files: TokenFiles = token_files(root, key, documents, self.tokenizer.encode_batch,
                                             self.tokenizer.vocab_size, say)
        self.tokens = {split: self.files.tokens(split) for split in SPLITS}
        self._check_lengths(val_fraction, test_fraction)
        self.token_bytes = tuple(int(b) for b in self.tokenizer.token_bytes())
        self.splits = {name: self._fixed_windows(name, eval_windows) for name in SPLITS}

    def _tokenizer(self, kind, vocab_size, min_frequency, name, root, splitting, documents):
        if kind == "bytes":
            return BytesTokenizer()
        if kind == "pretrained":
            return pretrained(name)
        try:
            import tokenizers  # noqa: F401
        except ImportError:
            require(False, "tokenizer", "bpe", "an installed `tokenizers` (pip install -e '.[lm]'), or bytes")
        key = bpe_key(self.source.source_key, splitting, vocab_size, min_frequency)

        def train_texts():
            return (text for split, text in documents() if split == "train")

        return cached_bpe(root / "tokenizers", key, train_texts, vocab_size, min_frequency, say)

    def _check_lengths(self, val_fraction: float, test_fraction: float) -> None:
        length = self.seq_len + 1
        counts = {split: len(tokens) for split, tokens in self.tokens.items()}
        where = f"{self.source.name} as {self.tokenizer.name}: train {counts['train']:,}, val {counts['val']:,}, " \
                f"test {counts['test']:,} tokens"
        require(counts["val"] >= length, "val_fraction", val_fraction,
                f"a fraction whose split holds a window of seq_len + 1 = {length} tokens, or a smaller seq_len "
                f"({where})", related=["seq_len"])
        require(test_fraction == 0 or counts["test"] >= length, "test_fraction", test_fraction,
                f"0, or a fraction whose split holds a window of seq_len + 1 = {length} tokens ({where})",
                related=["seq_len"])
        require(counts["train"] > length, "seq_len", self.seq_len, f"fewer than the train split's tokens ({where})",
                related=["val_fraction", "test_fraction"])

    @staticmethod
    def _validate(tokenizer, vocab_size, min_frequency, seq_len, batch_size, eval_windows, eval_batch_size,
                  val_fraction, test_fraction, shuffle_seed, warn_passes) -> None:
        require(tokenizer in TOKENIZERS, "tokenizer", tokenizer, " | ".join(TOKENIZERS))
        require(is_int(vocab_size) and 256 < vocab_size <= 2**32, "vocab_size", vocab_size,
                "an integer above 256 (the byte alphabet; with tokenizer=bpe)")
        require(is_int(min_frequency) and min_frequency >= 1, "min_frequency", min_frequency, "a positive integer")
        require(is_int(seq_len) and seq_len >= 1, "seq_len", seq_len, "a positive integer (tokens per window)")
        require(is_int(batch_size) and batch_size >= 1, "batch_size", batch_size, "a positive integer")
        require(is_int(eval_windows) and eval_windows >= 1, "eval_windows", eval_windows, "a positive integer")
        require(is_int(eval_batch_size) and (eval_batch_size == -1 or eval_batch_size > 0), "eval_batch_size",
                eval_batch_size, "-1 (a split's eval windows at once) or a positive integer")
        number = (int, float)
        require(isinstance(val_fraction, number) and not isinstance(val_fraction, bool) and 0 < val_fraction < 1,
                "val_fraction", val_fraction, "a number in (0, 1)")
        require(isinstance(test_fraction, number) and not isinstance(test_fraction, bool) and 0 <= test_fraction < 1
                and val_fraction + test_fraction < 1, "test_fraction", test_fraction,
                "a number in [0, 1) with val_fraction + test_fraction < 1", related=["val_fraction"])
        require(is_int(shuffle_seed) and shuffle_seed >= 0, "shuffle_seed", shuffle_seed, "a non-negative integer")
        require(isinstance(warn_passes, number) and not isinstance(warn_passes, bool) and warn_passes > 0,
                "warn_passes", warn_passes, "a positive number of passes over the train split")

    def _fixed_windows(self, split: str, count: int) -> Batch:
        tokens = self.tokens[split]
        starts = evenly_spaced_starts(len(tokens), self.seq_len + 1, count).numpy()
        return windows_of(tokens, starts, self.seq_len)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if stage in (None, "fit"):
            warn_at_fit(self.trainer, len(self.tokens["train"]), self.batch_size, self.seq_len, self.warn_passes,
                        self.eval_windows, self.splits)

    def train_dataloader(self) -> "TokenWindows":
        # Lightning asks for it after restoring a checkpoint, so global_step is the step to resume from
        first_step = self.trainer.global_step if self.trainer is not None else 0
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        return TokenWindows(self.tokens["train"], self.seq_len, self.batch_size, self.shuffle_seed, first_step,
                            *self._ranks(), device=device)

    def examples(self, split: str, n: int) -> Batch:
        """The same n windows every time: for `train` n evenly spaced windows of the train split, for `val` and
        `test` the first n of the fixed evaluation windows."""
        if split == "train":
            return self._fixed_windows("train", n)
        return take(self.splits[split], slice(0, n))

    @property
    def spec(self) -> TaskSpec:
        vocab = self.tokenizer.vocab_size
        return TaskSpec(num_classes=vocab, vocab_size=vocab, seq_len=self.seq_len, input_kind="tokens",
                        metrics=("acc", "perplexity", "bits_per_byte"), token_bytes=self.token_bytes)

    def corpus_info(self) -> CorpusInfo:
        """Which text and tokens: the corpus's name, the size and sha256 of the text tokenised, the tokenizer,
        tokens per split (and the Python version for the bundled text, the licence for the package corpus)."""
        meta = self.files.meta
        return CorpusInfo(self.source.name, meta["size_bytes"], meta["sha256"], self.source.python_version,
                          documents=None if self.source.single else meta["documents"], licence=self.source.licence,
                          tokenizer=self.tokenizer.name, tokens=dict(meta["tokens"]))

    def text_of(self, ids) -> str:
        """The text of token ids (a window, a row of inputs or of predictions)."""
        values = ids.flatten().tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.tokenizer.decode(values)


class TokenWindows:
    """Endless batches of `batch_size` windows at random starts of the memory-mapped `tokens`; step k's starts depend
    on (shuffle_seed, k) only; under DDP each process reads its share."""

    full_batch = False

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, shuffle_seed: int, first_step: int = 0,
                 rank: int = 0, world_size: int = 1, device: torch.device | None = None):
        self.tokens, self.seq_len, self.batch_size, self.shuffle_seed = tokens, seq_len, batch_size, shuffle_seed
        self.first_step, self.rank, self.world_size = first_step, rank, world_size
        self.device = device or torch.device("cpu")

    def starts(self, step: int) -> np.ndarray:
        """(batch_size,) the window starts of batch `step`, uniform over every window of the split."""
        generator = torch.Generator().manual_seed(mix_seed(self.shuffle_seed, step))
        return torch.randint(0, len(self.tokens) - self.seq_len, (self.batch_size,), generator=generator).numpy()

    def __iter__(self) -> Iterator[Batch]:
        step = self.first_step
        while True:
            batch = windows_of(self.tokens, self.starts(step)[self.rank :: self.world_size], self.seq_len)
            yield Batch(*(to_device(t, self.device) for t in batch)) if self.device.type != "cpu" else batch
            step += 1


def _plain(node) -> dict | None:
    """A config node (OmegaConf) or dict as a plain dict with string keys, None as None."""
    if node is None:
        return None
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        pass
    return dict(node)
