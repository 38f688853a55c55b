"""Which kinds of text a router sends where: each token's class by the characters it stands for, and per class the
share of its tokens routed to one option (the hybrid LM: to softmax attention).

Why: the hybrid-LM study asks whether per-token routing follows the text's structure (word boundaries, line breaks,
numbers); a share per class of characters says so in a few numbers. Classes, for a token's text (one byte at byte
level, a piece of a word or a run of spaces for sub-words):
- `newlines`: it holds a line break (a sub-word's newline with the next line's indentation included);
- `spaces`: only spaces or tabs;
- `letters`, `digits`, `punctuation`: only ASCII letters, digits or punctuation, a sub-word's leading space aside
  (` the` is letters);
- `other`: anything else: a mix of those (`foo_bar`, `x1`), a byte or character outside ASCII.
"""
from __future__ import annotations

import string
from typing import Callable, Iterable

import torch
from torch import Tensor

CLASSES = ("letters", "digits", "spaces", "newlines", "punctuation", "other")
ASCII_LETTERS, DIGITS, PUNCTUATION = set(string.ascii_letters), set(string.digits), set(string.punctuation)


def token_class(text: str) -> str:
    """The class (CLASSES) of a token's text."""
    if "\n" in text or "\r" in text:
        return "newlines"
    if text and set(text) <= {" ", "\t"}:
        return "spaces"
    word = text[1:] if text.startswith(" ") and len(text) > 1 else text
    for name, characters in (("letters", ASCII_LETTERS), ("digits", DIGITS), ("punctuation", PUNCTUATION)):
        if word and set(word) <= characters:
            return name
    return "other"


def class_ids(ids: Tensor, text_of: Callable[[Tensor], str]) -> Tensor:
    """`ids` (any shape) mapped to their class's index in CLASSES; each distinct id is decoded once."""
    distinct, inverse = torch.unique(ids.cpu(), return_inverse=True)
    classes = torch.tensor([CLASSES.index(token_class(text_of(i.reshape(1)))) for i in distinct], dtype=torch.long)
    return classes[inverse]


def shares_by_class(classes: Iterable[Tensor], chosen: Iterable[Tensor]) -> tuple[list[int], list[float | None]]:
    """Per class (CLASSES order): how many tokens, and the share of them whose `chosen` flag is set (None for a class
    with no token). `classes` and `chosen` are matching chunks (class indices, booleans) of the same tokens."""
    tokens = torch.zeros(len(CLASSES), dtype=torch.long)
    picked = torch.zeros(len(CLASSES), dtype=torch.long)
    for index, flag in zip(classes, chosen):
        index, flag = index.reshape(-1).cpu(), flag.reshape(-1).cpu()
        tokens += torch.bincount(index, minlength=len(CLASSES))
        picked += torch.bincount(index[flag], minlength=len(CLASSES))
    counts = tokens.tolist()
    return counts, [p / n if n else None for p, n in zip(picked.tolist(), counts)]
