"""Whole nets, each built from the sizes a task dictates and returning a `core.output.NetOutput`: mlp, gated_mlp
(gated depth with a compute cost), routed_mlp (routing state), transformer (blocks of parts), hybrid_lm."""
