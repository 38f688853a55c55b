"""Routing by class of text: the class of a token's text, the share of each class's tokens sent to an option, and the
token-routing diagnostic's measure of it on a net whose routing is planted (known for every byte), on the real
validation windows of the bundled text."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from callbacks.diagnostics.token_classes import CLASSES, class_ids, shares_by_class, token_class
from callbacks.diagnostics.token_routing import TokenRouting
from datamodules import ByteText


@pytest.mark.parametrize("text, expected", [
    ("a", "letters"), (" the", "letters"), ("Zebra", "letters"), ("7", "digits"), (" 2024", "digits"),
    (" ", "spaces"), ("\t  ", "spaces"), ("\n", "newlines"), ("\n    ", "newlines"), ("\r\n", "newlines"),
    (".", "punctuation"), (" ==", "punctuation"), ("_", "punctuation"), ("foo_bar", "other"), ("x1", "other"),
    ("é", "other"), ("\ufffd", "other"), ("", "other"), ("  x", "other"),
])
def test_the_class_of_a_tokens_text(text, expected):
    assert token_class(text) == expected


def test_class_ids_decode_each_byte():
    ids = torch.tensor([[ord("a"), ord(" "), ord("\n"), ord("5")], [ord(","), 200, ord("a"), ord("a")]])
    assert class_ids(ids, ByteText.text_of).tolist() == [
        [CLASSES.index(c) for c in ("letters", "spaces", "newlines", "digits")],
        [CLASSES.index(c) for c in ("punctuation", "other", "letters", "letters")]]


def test_shares_over_chunks_count_every_token_once():
    letters, spaces = CLASSES.index("letters"), CLASSES.index("spaces")
    classes = [torch.tensor([letters, letters, spaces]), torch.tensor([[letters], [spaces]])]
    chosen = [torch.tensor([True, False, True]), torch.tensor([[True], [False]])]
    counts, shares = shares_by_class(classes, chosen)
    assert counts[letters] == 3 and counts[spaces] == 2 and sum(counts) == 5
    assert shares[letters] == pytest.approx(2 / 3) and shares[spaces] == pytest.approx(1 / 2)
    assert shares[CLASSES.index("digits")] is None  # no digit among the tokens


class PlantedRouting(nn.Module):
    """A routed net stand-in whose choices are planted: layer_1 sends spaces and newlines to softmax (option 1),
    layer_2 every byte at an even position of its window; everything else to GDN (option 0)."""

    routing_options = ("gdn", "softmax")

    def forward(self, inputs):
        first = (inputs == ord(" ")) | (inputs == ord("\n"))
        second = (torch.arange(inputs.shape[1]) % 2 == 0).expand_as(inputs)
        aux = {}
        for layer, choice in (("layer_1", first), ("layer_2", second)):
            index = choice.long()
            aux[f"{layer}/mixer/routing"] = nn.functional.one_hot(index, 2).float()
            aux[f"{layer}/mixer/expert_index"] = index[..., None]
        return SimpleNamespace(aux=aux)


class Module(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = PlantedRouting()

    @property
    def device(self):
        return torch.device("cpu")


def test_the_diagnostic_measures_planted_routing_on_every_validation_window():
    task = ByteText(seq_len=64, batch_size=4, eval_windows=48, eval_batch_size=20)  # three chunks: 20, 20, 8
    measured = TokenRouting().routing_by_class(SimpleNamespace(datamodule=task), Module())
    windows = task.splits["val"].inputs
    assert windows.shape == (48, 64)
    # counted here byte by byte, with Python's own character tests
    by_class = {name: [] for name in CLASSES}
    for row in windows.tolist():
        for position, byte in enumerate(row):
            char = chr(byte)
            name = ("newlines" if char in "\r\n" else "spaces" if char in " \t" else "other" if byte >= 128
                    else "letters" if char.isalpha() else "digits" if char.isdigit()
                    else "punctuation" if char.isprintable() else "other")
            by_class[name].append(position)
    assert measured["split"] == "val" and measured["option"] == "softmax"
    assert measured["tokens"] == {name: len(positions) for name, positions in by_class.items()}
    assert sum(measured["tokens"].values()) == 48 * 64
    assert measured["tokens"]["letters"] > 1000 and measured["tokens"]["spaces"] > 300  # it is prose
    share_1, share_2 = measured["share"]["layer_1"], measured["share"]["layer_2"]
    assert share_1["spaces"] == share_1["newlines"] == 1.0
    assert share_1["letters"] == share_1["digits"] == share_1["punctuation"] == 0.0
    for name, positions in by_class.items():
        if positions:
            assert share_2[name] == pytest.approx(sum(p % 2 == 0 for p in positions) / len(positions), rel=1e-12)
