"""Bytes as tokens: a text's UTF-8 bytes are its token ids (0..255), so any text or file is its own encoding and
nothing (no vocabulary file, no trained tokenizer) has to be downloaded or kept in step with a run.

A multi-byte character spans several tokens; `decode` of a cut through one shows U+FFFD for the broken part, never
an exception, so any window of model output can be printed.
"""
from __future__ import annotations

from typing import Iterable

import torch

VOCAB_SIZE = 256


def encode(text: str | bytes) -> torch.Tensor:
    """(len,) uint8 token ids: the UTF-8 bytes of `text` (bytes are taken as they are)."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if not data:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def decode(ids: torch.Tensor | Iterable[int]) -> str:
    """The text of byte ids (a tensor of any integer dtype, or ints in 0..255), invalid UTF-8 replaced."""
    values = ids.flatten().tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return bytes(values).decode("utf-8", errors="replace")
