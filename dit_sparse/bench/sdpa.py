"""Dense attention as the benchmarks run it: cuDNN first through SDPA's backend priority, and a
record of the scaled_dot_product_attention calls a step makes, to replay and time them alone."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SDPA_ORDER = (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)


def sdpa_priority():
    """cuDNN attention wherever it takes the call, else the next backend of SDPA_ORDER."""
    return sdpa_kernel(list(SDPA_ORDER), set_priority=True)


@dataclass
class SdpaCall:
    """What one scaled_dot_product_attention call got, to replay it alone."""

    q: tuple
    k: tuple
    v: tuple  # (shape, stride) each
    dtype: torch.dtype
    device: torch.device
    mask: torch.Tensor | None
    is_causal: bool
    scale: float | None

    @property
    def key(self):
        mask = None if self.mask is None else (tuple(self.mask.shape), self.mask.dtype)
        return self.q, self.k, self.v, self.dtype, mask, self.is_causal, self.scale

    @property
    def sequence_length(self) -> int:
        return self.q[0][-2]

    def is_self_attention(self, num_tokens: int, text_len: int) -> bool:
        """Queries and keys of one sequence holding every latent token (text refiners attend
        the text alone, cross-attention has other keys)."""
        length = self.q[0][-2]
        return length == self.k[0][-2] and length >= num_tokens and length > text_len

    def run(self):
        """A function running this call alone on random data of the same shapes and strides."""
        q, k, v = (torch.empty_strided(*s, dtype=self.dtype, device=self.device).normal_()
                   for s in (self.q, self.k, self.v))
        return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.is_causal,
                                                      scale=self.scale)


@contextlib.contextmanager
def recording_sdpa():
    """Record every torch.nn.functional.scaled_dot_product_attention call made inside."""
    seen, original = [], F.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        seen.append(SdpaCall(*((tuple(t.shape), t.stride()) for t in (query, key, value)), query.dtype,
                             query.device, attn_mask, is_causal, scale))
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, enable_gqa=enable_gqa)

    F.scaled_dot_product_attention = spy
    try:
        yield seen
    finally:
        F.scaled_dot_product_attention = original


def first_backend(call: SdpaCall) -> str:
    """The first backend of SDPA_ORDER that runs this call: the one `sdpa_priority` picks."""
    fn = call.run()
    for backend in SDPA_ORDER:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with sdpa_kernel([backend]):
                    fn()
            return backend.name
        except RuntimeError:
            continue
    return "none"
