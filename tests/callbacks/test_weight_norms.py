"""Weight norms: per layer, per optimiser group and in total against torch.linalg.norm of the flattened weights
(tied weights counted once in the total), and a real run with resume whose numbers add up and match its checkpoint."""
import math

import pytest
import torch
from torch import nn

from callbacks.diagnostics.weight_norms import WeightNorms, group_norms, l2_norm, layer_norms
from tests.conftest import metrics_rows

pytestmark = pytest.mark.usefixtures("one_thread")


class TiedNet(nn.Module):
    """An embedding and an unembedding sharing one matrix, a block in between, and a parameter of its own."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(7, 4)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4, bias=False))
        self.unembed = nn.Linear(4, 7, bias=False)
        self.unembed.weight = self.embed.weight
        self.scale = nn.Parameter(torch.tensor([2.0, -1.0]))
        self.act = nn.ReLU()  # no parameters: no norm


def flat(tensors):
    return torch.cat([t.detach().flatten() for t in tensors])


def test_layer_norms_match_torch_linalg_norm_of_the_flattened_weights():
    net = TiedNet()
    norms = layer_norms(net)
    assert set(norms) == {"embed", "block", "unembed", "scale"}
    assert norms["embed"] == pytest.approx(float(torch.linalg.norm(net.embed.weight.detach())), rel=1e-6)
    block = flat([net.block[0].weight, net.block[0].bias, net.block[2].weight])
    assert norms["block"] == pytest.approx(float(torch.linalg.norm(block)), rel=1e-6)
    assert norms["unembed"] == norms["embed"]  # the same matrix
    assert norms["scale"] == pytest.approx(math.sqrt(5.0))


def test_the_total_counts_a_tied_matrix_once():
    net = TiedNet()
    unique = flat([net.embed.weight, *net.block.parameters(), net.scale])
    assert l2_norm(net.parameters()) == pytest.approx(float(torch.linalg.norm(unique)), rel=1e-6)
    layers = layer_norms(net)
    # the layers' squares add up to the total's plus the tied matrix once more
    assert sum(v**2 for v in layers.values()) == pytest.approx(l2_norm(net.parameters()) ** 2 + layers["embed"] ** 2,
                                                               rel=1e-5)
    assert l2_norm([]) == 0.0


def test_group_norms_by_name_or_index():
    net = TiedNet()
    named = torch.optim.AdamW([{"name": "decay", "params": [net.embed.weight, net.block[2].weight]},
                               {"name": "no_decay", "params": [net.block[0].weight, net.block[0].bias, net.scale]}])
    norms = group_norms(named)
    assert norms["group_decay"] == pytest.approx(
        float(torch.linalg.norm(flat([net.embed.weight, net.block[2].weight]))), rel=1e-6)
    assert norms["group_no_decay"] == pytest.approx(
        float(torch.linalg.norm(flat([net.block[0].weight, net.block[0].bias, net.scale]))), rel=1e-6)
    unnamed = torch.optim.SGD([{"params": [net.scale]}, {"params": [net.embed.weight]}], lr=0.1)
    assert set(group_norms(unnamed)) == {"group_0", "group_1"}


NORMS = "+callbacks.weight_norms={_target_: callbacks.diagnostics.weight_norms.WeightNorms, every_n_steps: 10}"


def test_a_run_logs_norms_that_add_up_match_its_checkpoint_and_survive_resume(run_config):
    common = ["threads=1", "callbacks.checkpoint.every_n_train_steps=10", NORMS]
    _, first = run_config([*common, "trainer.max_steps=20"], name="first")
    _, run_dir = run_config([*common, f"ckpt_path={first}/checkpoints/last.ckpt"], name="resumed")
    assert (first / "plots" / "weights_norm.png").is_file() and (run_dir / "plots" / "weights_norm.png").is_file()

    rows = {int(r["step"]): r for r in metrics_rows(first) + metrics_rows(run_dir)
               if r.get("weights/norm/total")}
    assert sorted(rows) == [0, 9, 19, 29, 39]  # initialisation, then after steps 10, 20, 30, 40
    for row in rows.values():
        norm = {k.removeprefix("weights/norm/"): float(v) for k, v in row.items()
                if k.startswith("weights/norm/") and v}
        assert set(norm) == {"hidden", "head", "group_decay", "group_no_decay", "total"}  # the MLP's two children
        # every weight is in exactly one layer and one group: squares add up to the total's
        assert norm["hidden"] ** 2 + norm["head"] ** 2 == pytest.approx(norm["total"] ** 2, rel=1e-5)
        assert norm["group_decay"] ** 2 + norm["group_no_decay"] ** 2 == pytest.approx(norm["total"] ** 2, rel=1e-5)
    totals = [float(rows[s]["weights/norm/total"]) for s in sorted(rows)]
    assert totals[0] != totals[-1]  # the weights moved

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 40
    weights = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    head = torch.linalg.norm(flat([v for k, v in weights.items() if k.startswith("net.head.")]))
    assert float(rows[39]["weights/norm/head"]) == pytest.approx(float(head), rel=1e-6)
    assert float(rows[39]["weights/norm/total"]) == pytest.approx(float(torch.linalg.norm(flat(weights.values()))),
                                                                  rel=1e-6)
    (state,) = [v for k, v in ckpt["callbacks"].items() if "WeightNorms" in k]
    assert [h["step"] for h in state["history"]] == [0, 10, 20, 30, 40]


def test_bad_cadence_is_refused():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="every_n_steps=0"):
        WeightNorms(every_n_steps=0)
