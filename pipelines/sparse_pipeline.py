"""`sparse_pipeline(Stock)`: a drop-in subclass of a diffusers pipeline with sparse attention.

The subclass takes the stock constructor's arguments plus `sparse_config` and `cache` (also
through `from_pretrained`, which passes optional constructor arguments on), applies sparse
attention, with the step cache `cache` if given (as `dit_sparse.apply(cache=...)` takes it), to
its transformer(s) when built, and keeps the handle as `pipe.sparse_attention`. Its call is the
stock call; `pipe.sparse_attention.enabled = False` gives the stock attention.
"""

from __future__ import annotations

import inspect

from dit_sparse.api import apply


def sparse_pipeline(stock: type, name: str) -> type:
    def __init__(self, *args, sparse_config=None, cache=None, **kwargs):
        stock.__init__(self, *args, **kwargs)
        self.sparse_attention = apply(self, sparse_config, cache=cache)

    signature = inspect.signature(stock.__init__)
    params = list(signature.parameters.values())
    extra = [inspect.Parameter(arg, inspect.Parameter.KEYWORD_ONLY, default=None) for arg in ("sparse_config", "cache")]
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    __init__.__signature__ = signature.replace(parameters=params[:at] + extra + params[at:])
    doc = (f"{stock.__name__} with dit_sparse sparse self-attention. Same constructor, `from_pretrained` "
           f"and call; `sparse_config` (a SparseAttentionConfig, default: the balanced settings) chooses "
           f"how sparse; `cache` adds a diffusers step cache ('first-block', 'mag', 'taylorseer' or a cache "
           f"config, as dit_sparse.apply takes it); `pipe.sparse_attention` is the handle (stats(), reset(), enabled).")
    return type(name, (stock,), {"__init__": __init__, "__doc__": doc, "__module__": __name__.rsplit(".", 1)[0]})
