"""The maths of a mechanism as functions, with their reference forms: the gated delta rule (gated_delta), when
flash-linear-attention's fused kernel may run it instead (fla_choice), rotary positions (rotary)."""
