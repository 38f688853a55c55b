"""Per-token routing between mechanisms (the hybrid LM: Gated DeltaNet or softmax attention for each token of a
routed layer): how the tokens split, how decided and how balanced the routers are, and which tokens go where.

At its cadence the callback runs the net in eval mode (deterministic argmax routing, as at inference) on a fixed
probe of validation windows and logs, per routed layer `layer_<i>`:
- `routing/eval_share/layer_<i>/<option>`: the share of the probe's tokens sent to each option;
- `routing/eval_entropy/layer_<i>`: the mean entropy of the router's probabilities (nats; ln 2 is undecided);
- `routing/eval_balance/layer_<i>`: the Switch balance term E * sum_i f_i P_i (1 balanced, E collapsed);
- on tasks whose answers are some of the positions (associative recall: the queries), also the share of the
  answer positions and of the others sent to the last option: `routing/eval_share_at_answers/layer_<i>/<option>`,
  `routing/eval_share_elsewhere/layer_<i>/<option>` (does the router send the recall queries to softmax?).
Figures: `routing/over_training` (the three over steps) and `routing/tokens`: a sample text with every token
coloured by the mechanism each routed layer sent it to.
When training ends, on the final weights and every evaluation window of the validation split: per class of text
(letters, digits, spaces, newlines, punctuation, other: callbacks/diagnostics/token_classes.py) the share of its tokens
each routed layer sent to the last option (softmax), into summary.json as `routing_by_class` (read by
`python -m analysis.routing_by_class`) and drawn as `routing/by_class`.
"""
from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch

from callbacks.diagnostics.base import Diagnostic, eval_forward, new_figure, publish_figure
from callbacks.diagnostics.token_classes import CLASSES, class_ids, shares_by_class
from core.errors import require
from lightning_modules.step import router_layer
from regularizers.moe import expert_balance
from regularizers.routing import entropy

OPTION_COLOURS = ("#dbe9f6", "#f4a582", "#92c5de", "#b2abd2")  # option 0 (gdn) pale, option 1 (softmax) warm


def printable(text: str) -> list[str]:
    """One visible glyph per character: a space as an open box, a newline as a return sign, tab and other control
    characters as a dot."""
    return ["␣" if c == " " else "⏎" if c == "\n" else "·" if (not c.isprintable() or c == "\t") else c
            for c in text]


class TokenRouting(Diagnostic):
    """probe_size: validation windows the routing is read on; sample_tokens: tokens of the first one drawn."""

    name = "token_routing"
    summary_key = "routing_by_class"

    def __init__(self, every_n_steps: int = 100, plot_every_n_steps: int | None = 500, probe_size: int = 8,
                 sample_tokens: int = 256, columns: int = 64):
        super().__init__(every_n_steps, plot_every_n_steps=plot_every_n_steps)
        for key, value in (("probe_size", probe_size), ("sample_tokens", sample_tokens), ("columns", columns)):
            require(isinstance(value, int) and value >= 1, key, value, "an integer >= 1")
        self.probe_size, self.sample_tokens, self.columns = probe_size, sample_tokens, columns
        self.latest: dict[str, np.ndarray] = {}  # routed layer -> choices of the sample's tokens
        self.sample: list[str] = []
        self.by_class: dict | None = None  # the final weights' routing per class of text (summary.json)

    def requirements(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
        if not getattr(pl_module.net, "routing_options", None):
            return "the net routes no tokens between mechanisms; a hybrid LM with routed layers does"
        return None

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        data, options = trainer.datamodule, pl_module.net.routing_options
        split = "val" if "val" in data.split_names() else "train"
        probe = data.examples(split, self.probe_size)
        aux = eval_forward(pl_module, probe.inputs.to(pl_module.device)).aux
        routers = {router_layer(key, i): key.removesuffix("routing")
                   for i, key in enumerate(k for k in aux if k.endswith("/routing"))}
        if not routers:
            self.stand_aside(trainer, "the net has no routed layers: every layer is a fixed mechanism")
            return {}
        metrics, record = {}, {"step": trainer.global_step}
        for layer, prefix in routers.items():
            probs, choices = aux[prefix + "routing"].float(), aux[prefix + "expert_index"]
            share = torch.bincount(choices.reshape(-1), minlength=len(options)).float() / choices.numel()
            metrics |= {f"routing/eval_share/{layer}/{name}": v.item() for name, v in zip(options, share)}
            metrics[f"routing/eval_entropy/{layer}"] = entropy(probs.reshape(-1, len(options))).mean().item()
            metrics[f"routing/eval_balance/{layer}"] = expert_balance(probs, choices).item()
            answers = probe.answer_mask.to(choices.device)
            if answers.shape == choices.shape[:2] and 0 < int(answers.sum()) < answers.numel():
                last = options[-1]
                picked = choices[..., 0] == len(options) - 1
                metrics[f"routing/eval_share_at_answers/{layer}/{last}"] = picked[answers].float().mean().item()
                metrics[f"routing/eval_share_elsewhere/{layer}/{last}"] = picked[~answers].float().mean().item()
            record[layer] = {"share": share.tolist(), "entropy": metrics[f"routing/eval_entropy/{layer}"],
                             "balance": metrics[f"routing/eval_balance/{layer}"]}
            self.latest[layer] = choices[0, : self.sample_tokens, 0].cpu().numpy()
        tokens = probe.inputs[0, : self.sample_tokens].cpu()
        text_of = getattr(data, "text_of", None)
        self.sample = printable(text_of(tokens)) if callable(text_of) else [str(t) for t in tokens.tolist()]
        if len(self.sample) != len(tokens):  # a multi-byte character decodes to one glyph: draw byte by byte
            self.sample = [printable(text_of(t.reshape(1)))[0] if text_of else str(t.item()) for t in tokens]
        self.history.append(record)
        return metrics

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.stood_aside and trainer.is_global_zero:
            self.by_class = self.routing_by_class(trainer, pl_module)
        super().on_train_end(trainer, pl_module)

    def routing_by_class(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict | None:
        """Per class of text, the share of the tokens each routed layer sends to the last option, on every evaluation
        window of the validation split (eval mode); None where the task cannot say what text a token is."""
        data, options = trainer.datamodule, pl_module.net.routing_options
        text_of = getattr(data, "text_of", None)
        if not callable(text_of):
            return None
        split = "val" if "val" in data.split_names() else "train"
        classes, chosen = [], {}
        for batch in data.eval_batches(split):
            aux = eval_forward(pl_module, batch.inputs.to(pl_module.device)).aux
            for i, key in enumerate(k for k in aux if k.endswith("/routing")):
                picked = aux[key.removesuffix("routing") + "expert_index"][..., 0] == len(options) - 1
                chosen.setdefault(router_layer(key, i), []).append(picked)
            classes.append(class_ids(batch.inputs, text_of))
        if not chosen:
            return None
        counted = {layer: shares_by_class(classes, flags) for layer, flags in chosen.items()}
        tokens = next(iter(counted.values()))[0]
        return {"split": split, "option": options[-1], "tokens": dict(zip(CLASSES, tokens)),
                "share": {layer: dict(zip(CLASSES, shares)) for layer, (_, shares) in counted.items()}}

    def summary_part(self) -> dict | None:
        return self.by_class

    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.by_class:
            self._plot_by_class(trainer)
        if not self.history or not self.latest:
            return
        options = pl_module.net.routing_options
        layers = list(self.latest)
        fig = new_figure(12, 3.2)
        axes = fig.subplots(1, 3)
        steps = [h["step"] for h in self.history]
        for layer in layers:
            rows = [h.get(layer) for h in self.history]
            keep = [(s, r) for s, r in zip(steps, rows) if r]
            xs = [s for s, _ in keep]
            axes[0].plot(xs, [r["share"][-1] for _, r in keep], label=layer)
            axes[1].plot(xs, [r["entropy"] for _, r in keep], label=layer)
            axes[2].plot(xs, [r["balance"] for _, r in keep], label=layer)
        axes[0].set(xlabel="step", ylabel=f"share of tokens to {options[-1]}", ylim=(-0.02, 1.02))
        axes[1].set(xlabel="step", ylabel="routing entropy (nats)", ylim=(0, None))
        axes[1].axhline(np.log(len(options)), color="grey", lw=0.8, ls=":")
        axes[2].set(xlabel="step", ylabel="balance E·Σ f·P (1 = balanced)")
        axes[0].legend()
        fig.suptitle("routing on the validation probe (eval mode)")
        publish_figure(trainer, "routing/over_training", fig)
        self._plot_tokens(trainer, options, layers)

    def _plot_tokens(self, trainer: pl.Trainer, options: tuple[str, ...], layers: list[str]) -> None:
        n, cols = len(self.sample), self.columns
        rows = -(-n // cols)
        fig = new_figure(0.16 * cols + 0.6, (0.26 * rows + 0.45) * len(layers) + 0.5)
        axes = fig.subplots(len(layers), 1, squeeze=False)[:, 0]
        for ax, layer in zip(axes, layers):
            choices = self.latest[layer]
            for index, (glyph, choice) in enumerate(zip(self.sample, choices)):
                row, col = divmod(index, cols)
                ax.text(col, row, glyph, ha="center", va="center", family="monospace", fontsize=8,
                        bbox=dict(boxstyle="square,pad=0.15", lw=0,
                                  fc=OPTION_COLOURS[int(choice) % len(OPTION_COLOURS)]))
            share = float((choices == len(options) - 1).mean()) if len(choices) else 0.0
            ax.set(xlim=(-0.6, cols - 0.4), ylim=(rows - 0.4, -0.6), xticks=[], yticks=[],
                   title=f"{layer}: {share:.0%} of these tokens to {options[-1]} (coloured), the rest to "
                         f"{', '.join(options[:-1])}")
            for side in ax.spines.values():
                side.set_visible(False)
        publish_figure(trainer, "routing/tokens", fig)

    def _plot_by_class(self, trainer: pl.Trainer) -> None:
        """Bars: per class of text (with its token count), each routed layer's share of those tokens to the option."""
        by_class = self.by_class
        layers = list(by_class["share"])
        fig = new_figure(8, 3.4)
        ax = fig.subplots()
        width = 0.8 / len(layers)
        for index, layer in enumerate(layers):
            shares = [by_class["share"][layer][name] for name in CLASSES]
            ax.bar([c + (index - (len(layers) - 1) / 2) * width for c in range(len(CLASSES))],
                   [np.nan if v is None else v for v in shares], width=width, label=layer)
        ax.set_xticks(range(len(CLASSES)), [f"{name}\n({by_class['tokens'][name]:,})" for name in CLASSES], fontsize=8)
        ax.set(ylabel=f"share of tokens to {by_class['option']}", ylim=(0, 1.02),
               title=f"final weights, every {by_class['split']} window: routing by class of text (tokens)")
        ax.legend(fontsize=8)
        publish_figure(trainer, "routing/by_class", fig)
