"""What every run has: `checkpoint` (last.ckpt, resumable, and the best checkpoint's weights), `stop_request` (SIGINT
and SIGTERM honoured at a step boundary), `finite_loss` (the NaN guard), `grokking_time` (threshold steps and the
stop after grokking), `progress` (the progress line), `throughput` (tokens/s)."""
