"""`sparse_pipeline(Stock)`: a drop-in subclass of a diffusers pipeline with sparse attention.

The subclass takes the stock constructor's arguments plus `sparse_config` (also through
`from_pretrained`, which passes optional constructor arguments on), applies sparse attention
to its transformer(s) when built, and keeps the handle as `pipe.sparse_attention`. Its call
is the stock call; `pipe.sparse_attention.enabled = False` gives the stock output.
"""

from __future__ import annotations

import inspect

from dit_sparse.api import apply


def sparse_pipeline(stock: type, name: str) -> type:
    def __init__(self, *args, sparse_config=None, **kwargs):
        stock.__init__(self, *args, **kwargs)
        self.sparse_attention = apply(self, sparse_config)

    signature = inspect.signature(stock.__init__)
    params = list(signature.parameters.values())
    extra = inspect.Parameter("sparse_config", inspect.Parameter.KEYWORD_ONLY, default=None)
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    __init__.__signature__ = signature.replace(parameters=params[:at] + [extra] + params[at:])
    doc = (f"{stock.__name__} with dit_sparse sparse self-attention. Same constructor, `from_pretrained` "
           f"and call; `sparse_config` (a SparseAttentionConfig, default: the balanced settings) chooses "
           f"how sparse; `pipe.sparse_attention` is the handle (stats(), reset(), enabled).")
    return type(name, (stock,), {"__init__": __init__, "__doc__": doc, "__module__": __name__.rsplit(".", 1)[0]})
