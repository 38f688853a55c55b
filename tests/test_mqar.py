"""Multi-query associative recall end to end on CPU, the preset `experiment=mqar`: 32 key-value pairs from 128
keys, one layer of d_model 64 with 4 heads of width 16, the same short convolution before either mixer. Softmax
attention recalls them; a Gated DeltaNet of the same size, whose per-head state has 16 key dimensions for 32 pairs,
trained the same way for the same steps, does not (measured after 500 steps: softmax val acc 0.995, GDN 0.014, where
chance is 1/128; GDN was still at chance at step 2,000; docs/reproductions.md §8)."""
import pytest

from tests.conftest import metrics_rows, run_quietly, token_routing_of_final_weights

STEPS = 500


def train(tmp_path, layers):
    summary, printed = run_quietly(["experiment=mqar", f"model.layers=[{layers}]", f"trainer.max_steps={STEPS}",
                                    "threads=1", "callbacks.progress.refresh_seconds=1000",
                                    "callbacks.checkpoint.every_n_train_steps=100000"], tmp_path / layers)
    assert summary["status"] == "completed", summary.get("error")
    return summary, printed


def test_softmax_attention_recalls_32_pairs_where_a_same_size_gated_deltanet_does_not(tmp_path):
    softmax, printed = train(tmp_path, "attn")
    gdn, _ = train(tmp_path, "gdn")
    params = softmax["parameters"], gdn["parameters"]
    assert 0.9 < params[0] / params[1] < 1.0, params  # same size (74,688 vs 79,320: GDN has gates)
    final = softmax["final"]
    assert final["val/acc"] > 0.95 and final["val/exact_match"] > 0.5, final  # chance: 1/128 per query
    positions = [final[f"val/acc/position_{i}"] for i in range(32)]
    assert min(positions) > 0.9, positions  # every query column, not just the easy ones
    assert gdn["final"]["val/acc"] < 0.2, gdn["final"]
    assert "token_routing: stands aside" in printed  # no routed layers


# the routed net of the preset shrunk to a run of seconds: 4 pairs of 32 tokens, d_model 32, 20 steps
ROUTED_TINY = ["experiment=mqar", "model.layers=[gdn,routed]", "data.vocab_size=32", "data.n_pairs=4",
               "data.n_train=256", "data.n_val=64", "model.d_model=32", "model.n_heads=2", "model.d_mlp=32",
               "trainer.max_steps=20", "trainer.val_check_interval=10", "trainer.log_every_n_steps=10",
               "callbacks.token_routing.every_n_steps=10", "threads=1", "callbacks.progress.refresh_seconds=1000",
               "callbacks.checkpoint.every_n_train_steps=100000"]


def test_the_routed_net_logs_where_its_router_sends_the_queries(tmp_path):
    """`model.layers=[gdn,routed]`: layer 1 routes each token to GDN or softmax; the token-routing diagnostic logs
    the shares of the queries (the answer positions) and of the other tokens sent to softmax, which are those of
    the final weights on its validation probe, counted here token by token."""
    summary, printed = run_quietly(ROUTED_TINY, tmp_path / "run")
    assert summary["status"] == "completed", summary.get("error")
    assert "token_routing: stands aside" not in printed
    rows = metrics_rows(tmp_path / "run")
    last = {key: float(value) for row in rows for key, value in row.items() if value}  # last logged value of each
    expected = token_routing_of_final_weights(ROUTED_TINY, tmp_path / "run")
    assert set(expected) == {"routing/eval_share/layer_1/gdn", "routing/eval_share/layer_1/softmax",
                             "routing/eval_entropy/layer_1", "routing/eval_balance/layer_1",
                             "routing/eval_share_at_answers/layer_1/softmax",
                             "routing/eval_share_elsewhere/layer_1/softmax"}
    for key, value in expected.items():
        assert last[key] == pytest.approx(value, rel=1e-5), key
    # every query and every pair token is one of the 8 x 12 probe tokens: the overall share is their mix
    assert last["routing/eval_share/layer_1/softmax"] == pytest.approx(
        (4 * last["routing/eval_share_at_answers/layer_1/softmax"]
         + 8 * last["routing/eval_share_elsewhere/layer_1/softmax"]) / 12, rel=1e-6)
    assert {"routing/share/layer_1/gdn", "routing/share/layer_1/softmax"} <= set(last)  # the training batch's
