"""Multi-query associative recall end to end on CPU: the small softmax-attention model of `experiment=mqar_cpu`
learns to recall 8 key-value pairs (measured: val acc 0.19 at step 300, 0.998 at step 400, when the induction
circuit forms), and its routing diagnostic stands aside (no routed layers)."""
import contextlib
import io


def test_two_softmax_layers_learn_to_recall_eight_pairs(tmp_path):
    import torch

    from launch import run
    from runtime.config.compose import compose_config

    threads, printed = torch.get_num_threads(), io.StringIO()
    cfg = compose_config(["experiment=mqar_cpu", "model.layers=[attn,attn]", "data.n_pairs=8", "trainer.max_steps=500",
                          "threads=1", "callbacks.progress.refresh_seconds=1000",
                          "callbacks.checkpoint.every_n_train_steps=100000"], output_dir=tmp_path / "run")
    try:
        with contextlib.redirect_stdout(printed):
            summary = run(cfg)
    finally:
        torch.set_num_threads(threads)
    final = summary["final"]
    assert summary["status"] == "completed", summary.get("error")
    assert final["val/acc"] > 0.95 and final["val/exact_match"] > 0.7, final  # chance: 1/32 per query
    positions = [final[f"val/acc/position_{i}"] for i in range(8)]
    assert min(positions) > 0.9, positions  # every query column, not just the easy ones
    assert "token_routing: stands aside" in printed.getvalue()
