"""What attention learns on the reversed-digit task (the MoE-expressivity study), read from the final weights.

When training ends the callback runs the net on a fixed probe (`examples(split, probe_size)`, the validation split
by default, at most `probe_size` examples) and measures, with the method of each stated here (the arithmetic is
in callbacks/diagnostics/circuit_math.py):
- attention maps per layer and head averaged over the examples of each carry-chain length L (figure
  `circuits/attention_by_chain/layer_<i>`), and per head, over the queries that predict answer digits: the entropy
  in nats (`circuits/attn_entropy/layer_<i>/head_<h>`), the weight on the input digit d_j from the query that
  predicts o_j (`circuits/attn_to_operand/...`) and the summed weight on the lower digits d_0..d_{j-1}, where o_j's
  carry comes from (`circuits/attn_to_lower_digits/...`);
- ablations: teacher-forced exact match (argmax at every answer position, the true digits fed in: greedy
  decoding would let one ablated digit corrupt the next input and mix effects) with every FFN's output, every
  mixer's output, or one head (its slice of `proj`'s input) replaced. `ablation: mean` (the default) replaces by
  the probe's mean at each position: it removes what the component says about this input and keeps its constant
  part (biases, the typical offset the final norm and later layers are used to), which zeroing also removes,
  pushing the stream off distribution. Keys `circuits/ablation/ffn_<mode>`, `attention_<mode>`,
  `layer_<i>/head_<h>_<mode>` beside the unablated `circuits/exact_match`; `ablation: both` gives both modes;
- direct logit attribution of the correct answer token's logit, averaged over answer tokens: the final norm is
  linearised at the full residual stream (its scale from the whole stream; LayerNorm also centres each component,
  RMSNorm only divides; `norm: none` is exact), so logit = embedding + attention + ffn + constant (norm bias and
  unembedding bias) exactly. `circuits/dla/<part>` is the mean contribution of a part (logit units) and
  `circuits/dla/<part>_share` = mean(part) / mean(embedding + attention + ffn), i.e. of the logit less the
  constant; the three shares sum to 1 (one may be negative);
- for routed FFNs (aux `layer_<i>/ffn/expert_index` and `routing`; a soft router's argmax head otherwise): the
  share of answer tokens routed (top-1) to each expert per answer digit o_j and per digit operation (+k, +1, +0)
  (`circuits/moe/usage/layer_<i>/<o_j | plus_k | plus_1 | plus_0>/expert_<e>`, figure `circuits/moe_usage/layer_<i>`),
  the plug-in mutual information in bits between top-1 expert and operation, `circuits/moe/mi_expert_operation/
  layer_<i>`, bounded by `circuits/moe/operation_entropy`, and the same given the answer position
  (`mi_expert_operation_given_position`: +k is o_0, so routing by position alone already carries information).
Everything lands flat in summary.json under `circuits` (`summary_part()`). `every_n_steps` also logs the cheap
parts (one forward: entropies, attention to digits, attribution, expert use) at that cadence; ablations and
figures happen once. Stands aside (one line) without `digit_structure()` or without a `nets.Transformer` whose
mixers are softmax attention.
"""
from __future__ import annotations

import copy

import lightning.pytorch as pl
import numpy as np
import torch

from callbacks.diagnostics import circuit_math as cm
from callbacks.diagnostics.base import Diagnostic, log_scalars, new_figure, publish_figure
from callbacks.run.checkpoint import best_net_state
from core.errors import require
from datamodules.batch import Batch
from nets import SoftmaxAttention, Transformer

ABLATIONS = ("mean", "zero", "both")


def net_problem(net) -> str | None:
    """Why the net cannot be read (said in the stand-aside line), or None."""
    if not isinstance(net, Transformer):
        return f"needs a nets.Transformer with softmax attention; the net is a {type(net).__name__}"
    other = sorted({type(b.attn).__name__ for b in net.blocks if not isinstance(b.attn, SoftmaxAttention)})
    if other:
        return f"needs softmax attention in every block; the net's mixer is {', '.join(other)}"
    return None


def operation_key(name: str) -> str:
    return "plus_" + name.removeprefix("+")  # +k -> plus_k: safe in every logger's metric names


class DigitCircuits(Diagnostic):
    """probe_size: at most this many examples of `split`; ablation: mean | zero | both."""

    name = "circuits"
    summary_key = "circuits"

    def __init__(self, every_n_steps: int | None = None, probe_size: int = 2000, split: str = "val",
                 ablation: str = "mean", weights: str = "last", plot: bool = True):
        """weights: last | best: the final analysis reads the last weights or the best checkpoint's (on a copy of
        the net, so training's own state is untouched), as the run's `final_weights` does."""
        super().__init__(every_n_steps, plot_every_n_steps=None, plot=plot)
        require(weights in ("last", "best"), "weights", weights, "last | best")
        self.weights = weights
        require(isinstance(probe_size, int) and probe_size >= 1, "probe_size", probe_size, "an integer >= 1")
        require(ablation in ABLATIONS, "ablation", ablation, " | ".join(ABLATIONS))
        self.probe_size, self.split, self.ablation = probe_size, split, ablation
        self.final: dict[str, float] = {}
        self.maps: list[dict[int, torch.Tensor]] = []  # per layer: chain length -> (H, T, T) mean attention
        self.usage: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # per routed layer: (i, by o_j, by operation)
        self.labels: list[str] = []
        self.operation_names: tuple[str, ...] = ()
        self.dla_skipped: str | None = None

    def requirements(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
        datamodule = trainer.datamodule
        if not callable(getattr(datamodule, "digit_structure", None)):
            return "needs the reversed-digit structure (digit_structure()); this task has none"
        if self.split not in datamodule.split_names():
            return f"needs a {self.split} split to probe; this task has none"
        if problem := net_problem(pl_module.net):
            return problem
        batch, operations, _ = self.probe(trainer, torch.device("cpu"))
        if tuple(operations.shape) != (len(batch.inputs), int(batch.answer_mask[0].sum())):
            return (f"needs examples({self.split}, n) to be the first n rows of digit_structure().indices"
                    f"[{self.split}]; this task's are not")
        return None

    def probe(self, trainer: pl.Trainer, device: torch.device) -> tuple[Batch, torch.Tensor, object]:
        """The probe, each row's digit operations (N, n + 1) (empty when the structure's rows are not the probe's:
        the carry chains disagree), and the structure."""
        structure = trainer.datamodule.digit_structure()
        batch = trainer.datamodule.examples(self.split, self.probe_size)
        rows = structure.indices[self.split][: len(batch.inputs)].to(structure.carry_lengths.device)
        operations = structure.digit_operations[rows]
        if len(rows) != len(batch.inputs) or not torch.equal(structure.carry_lengths[rows].cpu(), batch.group.cpu()):
            operations = operations[:0]
        return Batch(*(t.to(device) for t in batch)), operations.to(device), structure

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        metrics = self.analyse(trainer, pl_module.net, pl_module.device, final=False)
        self.history.append({"step": trainer.global_step, **metrics})
        return metrics

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stood_aside:
            return
        net = pl_module.net
        if self.weights == "best" and (best := best_net_state(trainer)) is not None:
            net = copy.deepcopy(net)
            net.load_state_dict(best[0])
        self.final = self.analyse(trainer, net, pl_module.device, final=True)
        log_scalars(trainer, self.final)
        self._plot(trainer, pl_module)

    def summary_part(self) -> dict[str, float] | None:
        return dict(self.final) or None

    def analyse(self, trainer: pl.Trainer, net: torch.nn.Module, device: torch.device, final: bool) -> dict[str, float]:
        batch, operations, structure = self.probe(trainer, device)
        n, seq_len = structure.n_digits, batch.inputs.shape[1]
        traced = cm.trace(net, batch.inputs)
        queries = cm.answer_queries(batch, seq_len)
        out = {"circuits/exact_match": cm.exact_match(traced.logits, batch),
               "circuits/probe_examples": float(len(batch.inputs))}
        attention = [traced.aux[f"layer_{i}/mixer/attention"] for i in range(len(net.blocks))]
        for i, a in enumerate(attention):
            entropy = cm.attention_entropy(a, queries)
            operand, lower = cm.digit_attention(a, n)
            for h in range(a.shape[1]):
                out[f"circuits/attn_entropy/layer_{i}/head_{h}"] = entropy[h].item()
                out[f"circuits/attn_to_operand/layer_{i}/head_{h}"] = operand[h].item()
                out[f"circuits/attn_to_lower_digits/layer_{i}/head_{h}"] = lower[h].item()
        out |= self.attribution(trainer, net, traced, batch, queries)
        out |= self.experts(traced, operations, queries, structure.operation_names, final)
        if final:
            modes = ("mean", "zero") if self.ablation == "both" else (self.ablation,)
            for mode in modes:
                for ablation in cm.ablations(net, traced, mode):
                    logits = cm.ablated_logits(net, batch.inputs, ablation.patches)
                    out[f"circuits/ablation/{ablation.name}"] = cm.exact_match(logits, batch)
            chains = batch.group
            self.maps = [{int(c): a[chains == c].double().mean(0).float().cpu() for c in chains.unique()}
                         for a in attention]
            self.labels = [f"d_{i}" for i in range(n)] + ["SEP"] + [f"o_{j}" for j in range(n + 1)]
        return out

    def attribution(self, trainer, net, traced, batch, queries) -> dict[str, float]:
        if not isinstance(net.ln_final, cm.LINEARISED_NORMS):
            if self.dla_skipped is None and getattr(trainer, "is_global_zero", True):
                print(f"[grokking-lab] circuits: no logit attribution (cannot linearise a final norm of type "
                      f"{type(net.ln_final).__name__})", flush=True)
            self.dla_skipped = type(net.ln_final).__name__
            return {}
        parts = {k: v.mean().item() for k, v in cm.logit_attribution(net, traced, batch, queries).items()}
        total = parts["embedding"] + parts["attention"] + parts["ffn"]
        out = {f"circuits/dla/{k}": parts[k] for k in ("embedding", "attention", "ffn", "constant", "logit")}
        out |= {f"circuits/dla/{k}_share": parts[k] / total if total else float("nan")
                for k in ("embedding", "attention", "ffn")}
        return out

    def experts(self, traced, operations, queries, operation_names, final) -> dict[str, float]:
        out: dict[str, float] = {}
        usage = []
        n_ops = len(operation_names)
        positions = torch.arange(len(queries), device=operations.device).expand_as(operations)
        for i in range(len(traced.ffn_out)):
            found = cm.top1_experts(traced.aux, i)
            if found is None:
                continue
            chosen, n_experts = found
            chosen = chosen[:, queries]  # (N, n + 1), aligned with operations
            key = f"circuits/moe/mi_expert_operation/layer_{i}"
            out[key] = cm.mutual_information_bits(chosen, operations)
            out[f"circuits/moe/mi_expert_operation_given_position/layer_{i}"] = (
                cm.conditional_mutual_information_bits(chosen, operations, positions))
            out["circuits/moe/operation_entropy"] = cm.entropy_bits(operations)
            by_position = cm.usage(chosen, positions, n_experts, len(queries))
            by_operation = cm.usage(chosen, operations, n_experts, n_ops)
            for rows, names in ((by_position, [f"o_{j}" for j in range(len(queries))]),
                                (by_operation, [operation_key(name) for name in operation_names])):
                for name, row in zip(names, rows):
                    if not row.isnan().any():
                        out |= {f"circuits/moe/usage/layer_{i}/{name}/expert_{e}": row[e].item()
                                for e in range(n_experts)}
            usage.append((i, by_position.cpu(), by_operation.cpu()))
        if final:
            self.usage, self.operation_names = usage, tuple(operation_names)
        return out

    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for i, maps in enumerate(self.maps):
            self.plot_chains(trainer, i, maps)
        for i, by_position, by_operation in self.usage:
            self.plot_usage(trainer, i, by_position, by_operation)
        if self.final:
            self.plot_components(trainer)

    def plot_chains(self, trainer: pl.Trainer, layer: int, maps: dict[int, torch.Tensor]) -> None:
        chains = sorted(maps)
        heads = next(iter(maps.values())).shape[0]
        fig = new_figure(2.3 * heads + 1.2, 2.3 * len(chains) + 0.6)
        axes = fig.subplots(len(chains), heads, squeeze=False)
        ticks = range(len(self.labels))
        for r, chain in enumerate(chains):
            for h in range(heads):
                ax = axes[r][h]
                image = ax.imshow(maps[chain][h].numpy(), vmin=0, vmax=1, cmap="Blues")
                ax.set_xticks(ticks, self.labels, fontsize=6, rotation=90)
                ax.set_yticks(ticks, self.labels, fontsize=6)
                if r == 0:
                    ax.set_title(f"head {h}", fontsize=8)
                if h == 0:
                    ax.set_ylabel(f"carry chain {chain}\nquery", fontsize=8)
        fig.colorbar(image, ax=axes.ravel().tolist(), label="attention (mean over examples)")
        fig.suptitle(f"layer {layer}: query (rows) attends to key (columns), by carry-chain length", fontsize=9)
        publish_figure(trainer, f"circuits/attention_by_chain/layer_{layer}", fig)

    def plot_usage(self, trainer: pl.Trainer, layer: int, by_position, by_operation) -> None:
        fig = new_figure(2.0 + 0.5 * by_position.shape[1] * 2, 0.5 * max(len(by_position), 3) + 1.5)
        axes = fig.subplots(1, 2, squeeze=False)[0]
        panels = ((by_position, [f"o_{j}" for j in range(len(by_position))], "answer digit"),
                  (by_operation, list(self.operation_names), "digit operation"))
        for ax, (table, names, what) in zip(axes, panels):
            values = np.nan_to_num(table.numpy(), nan=0.0)
            image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
            if values.size <= 64:  # small tables: the shares written in
                for (r, c), v in np.ndenumerate(values):
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
            ax.set_xticks(range(table.shape[1]), [str(e) for e in range(table.shape[1])], fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_xlabel("expert (top-1)", fontsize=8)
            ax.set_ylabel(what, fontsize=8)
        fig.colorbar(image, ax=list(axes), label="share of tokens")
        fig.suptitle(f"layer {layer}: expert use at the answer positions", fontsize=9)
        publish_figure(trainer, f"circuits/moe_usage/layer_{layer}", fig)

    def plot_components(self, trainer: pl.Trainer) -> None:
        ablated = {k.removeprefix("circuits/ablation/"): v for k, v in self.final.items()
                   if k.startswith("circuits/ablation/")}
        dla = {k: self.final.get(f"circuits/dla/{k}") for k in ("embedding", "attention", "ffn", "constant")}
        fig = new_figure(max(4.0, 0.35 * len(ablated) + 1.5) + 3.5, 3.4)
        left, right = fig.subplots(1, 2, width_ratios=[max(len(ablated), 1), 4])
        left.bar(range(len(ablated)), list(ablated.values()), color="C0")
        left.axhline(self.final["circuits/exact_match"], color="k", ls="--", lw=1, label="unablated")
        left.set_xticks(range(len(ablated)), list(ablated), rotation=60, ha="right", fontsize=7)
        left.set_ylim(0, 1.05)
        left.set_ylabel("exact match (teacher-forced)", fontsize=8)
        left.legend(fontsize=7)
        if dla["attention"] is not None:
            right.bar(range(4), list(dla.values()), color=["C2", "C0", "C1", "C7"])
            right.set_xticks(range(4), list(dla), fontsize=7, rotation=30)
            right.set_ylabel("mean contribution to the correct logit", fontsize=8)
        fig.suptitle("components of the final weights (probe)", fontsize=9)
        publish_figure(trainer, "circuits/components", fig)
