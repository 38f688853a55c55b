"""Transformers built from parts, spelled with the keywords of the one-class transformer before parts (n_heads,
d_mlp, activation, bias, attn_bias, n_ffn_heads): what `model.<key>=...` sets through conf/model/transformer.yaml."""
from functools import partial

from nets import GLUFFN, MLPFFN, RoutedFFN, SoftmaxAttention, Transformer

FFNS = {"mlp": MLPFFN, "glu": GLUFFN, "routed": RoutedFFN}


def transformer(vocab_size=10, num_classes=10, seq_len=6, *, n_heads=4, d_mlp=None, activation="gelu", bias=True,
                attn_bias=None, ffn="mlp", n_ffn_heads=4, gate="linear", **kw):
    """`Transformer` with a softmax-attention mixer and the FFN `ffn` (mlp | glu | routed); `kw` are its own."""
    mixer = partial(SoftmaxAttention, n_heads=n_heads, bias=bias if attn_bias is None else attn_bias)
    settings = dict(d_hidden=d_mlp, activation=activation, bias=bias)
    if ffn == "routed":
        settings |= {"n_heads": n_ffn_heads, "gate": gate}
    return Transformer(vocab_size, num_classes, seq_len, mixer=mixer, ffn=partial(FFNS[ffn], **settings), **kw)


def routed_transformer(vocab_size=10, num_classes=10, seq_len=6, *, n_ffn_heads=4, gate="linear", **kw):
    """What `RoutedTransformer(..., n_ffn_heads=N)` was: the transformer with a routed FFN (`gate`: its gate)."""
    return transformer(vocab_size, num_classes, seq_len, ffn="routed", n_ffn_heads=n_ffn_heads, gate=gate, **kw)
