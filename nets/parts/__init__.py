"""The parts of a transformer block, each an nn.Module whose forward returns (output, aux dict).

mixers   attention (softmax, optional short convolution), gated_deltanet (Gated DeltaNet), routed_mixer (GDN or
         softmax per token), short_conv
FFNs     ffns (MLP, GLU, the routed FFN over parallel heads), moe (mixture of experts), matching (parameter counts)
routers  token_router (hard Gumbel-softmax per token), parallel_heads (heads a softmax gate mixes)
block    block (x + mixer(norm(x)), then x + ffn(norm(x))), activations
"""
