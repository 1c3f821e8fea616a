"""The kernels as `dit_sparse::` operators: their schemas and fake impls pass opcheck, the fake
outputs have the real ones' shapes, dtypes and strides, eager wrappers call the ops, and
torch.compile traces the public wrappers whole (no graph break), without recompiling when the
index tables, templates or reordered heads change, and without Inductor seeing our Triton code."""

import importlib
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch._inductor.utils import run_and_get_code
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import dit_sparse.kernels
from dit_sparse.kernels import (
    KernelConfig,
    TokenOrder,
    block_sparse_attention,
    interleaved_rotary,
    reorder_tokens,
    sampled_block_lse,
)
from dit_sparse.kernels.block_lse import LseConfig
from dit_sparse.kernels.reorder import order_args

ORDER = TokenOrder(frames=3, positions=11, text_len=4, text_position="prefix")
B, H, S, D, BS, T = 2, 3, ORDER.num_tokens, 16, 16, 3  # S = 37: a partial last block
NB = -(-S // BS)
OPS = torch.ops.dit_sparse
CONFIG = KernelConfig(16, 16, 4, 2, tma=False)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def heads_first(gen, *, transposed: bool, d: int = D) -> torch.Tensor:
    """A (B, H, S, d) tensor: contiguous, or a view of a (B, S, H, d) buffer (diffusers' layout)."""
    if transposed:
        return torch.randn(B, S, H, d, generator=gen).transpose(1, 2)
    return torch.randn(B, H, S, d, generator=gen)


def templates(gen):
    """T templates of up to 2 distinct key blocks per query block, and a (B, H) pattern picking them."""
    idx = torch.rand(T, NB, NB, generator=gen).argsort(-1)[..., :2].int()
    cnt = torch.randint(0, 3, (T, NB), generator=gen, dtype=torch.int32)
    return idx, cnt, torch.randint(0, T, (B, H), generator=gen, dtype=torch.int32)


def attention_samples():
    """(args of dit_sparse::block_sparse_attention) for both q layouts and both backends:
    templates with reordered heads and lse (D = 16), and broadcast (stride-0) per-head tables
    with an explicit config (D = 24, pointer tiles)."""
    gen = torch.Generator().manual_seed(0)
    samples = []
    for transposed in (False, True):
        q, k, v = (heads_first(gen, transposed=transposed) for _ in range(3))
        q24, k24, v24 = (heads_first(gen, transposed=transposed, d=24) for _ in range(3))
        idx, cnt, pattern = templates(gen)
        flags = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.int8)
        per_head_idx, per_head_cnt = idx[0].expand(B, H, NB, 2), cnt[0].expand(B, H, NB)
        for backend in ("torch", "triton"):
            samples.append((q, k, v, idx, cnt, pattern, flags, *order_args(ORDER), BS, None, True, backend, None))
            samples.append((q24, k24, v24, per_head_idx, per_head_cnt, None, None, *order_args(None), BS, 0.3, False,
                            backend, CONFIG.as_args()))
    return samples


def other_samples():
    """(op, args) of the three other ops, on both backends."""
    gen = torch.Generator().manual_seed(1)
    q, k = heads_first(gen, transposed=True), heads_first(gen, transposed=False)
    rows = q[:, :, :5]
    flags = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.int8)
    fused = torch.randn(B, S, 2 * H * D, generator=gen)
    rq, rk = (fused[..., i * H * D:(i + 1) * H * D].unflatten(2, (H, D)) for i in range(2))  # strided views
    cos, sin = torch.randn(1, S, 1, D, generator=gen), torch.randn(1, S, 1, D, generator=gen)
    samples = []
    for backend in ("torch", "triton"):
        samples += [
            (OPS.sampled_block_lse.default, (rows, k, BS, None, *order_args(ORDER), backend, None)),
            (OPS.sampled_block_lse.default, (rows, k, BS, 0.5, *order_args(None), backend, LseConfig(2, 16).as_args())),
            (OPS.reorder_tokens.default, (q, *order_args(ORDER), flags, False, backend)),
            (OPS.reorder_tokens.default, (k, *order_args(ORDER), flags, True, backend)),
            (OPS.interleaved_rotary.default, (rq, rk, cos, sin, "wan", backend)),
            (OPS.interleaved_rotary.default, (rq.contiguous(), rk, cos, sin, "diffusers", backend)),
        ]
    return samples


SAMPLES = [(OPS.block_sparse_attention.default, args) for args in attention_samples()] + other_samples()


@pytest.mark.parametrize("op,args", SAMPLES, ids=lambda x: getattr(x, "_opname", ""))
def test_opcheck(op, args):
    """Schema (no mutation, no aliasing), fake impl against the real one, and AOT dispatch with
    dynamic shapes; no input requires grad (inference ops, no autograd formula)."""
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("op,args", SAMPLES, ids=lambda x: getattr(x, "_opname", ""))
def test_fake_outputs_match_real_ones(op, args):
    """Same shapes, dtypes and strides: what Inductor plans its buffers with."""
    real = op(*args)
    with FakeTensorMode() as mode:
        fake = op(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
    for r, f in zip(real, fake, strict=True) if isinstance(real, tuple) else [(real, fake)]:
        assert (f.shape, f.dtype, f.stride()) == (r.shape, r.dtype, r.stride())


@pytest.mark.parametrize("transposed", [False, True])
def test_attention_output_keeps_q_layout_on_both_backends(transposed):
    gen = torch.Generator().manual_seed(2)
    q, k, v = (heads_first(gen, transposed=transposed) for _ in range(3))
    idx, cnt, pattern = templates(gen)
    (ref, ref_lse), (out, lse) = (
        block_sparse_attention(q, k, v, idx, cnt, head_pattern=pattern, block_size=BS, backend=backend, order=ORDER,
                               return_lse=True, config=CONFIG) for backend in ("torch", "triton"))
    layout = torch.empty(B, S, H, D).transpose(1, 2) if transposed else torch.empty(B, H, S, D)
    assert out.stride() == ref.stride() == layout.stride()
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=1e-5)


class _OpLog(TorchDispatchMode):
    """The ops dispatched under it."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func))
        return func(*args, **(kwargs or {}))


def wrapper_calls():
    """(name, function of tensors, tensors) calling each public wrapper, for the compile tests."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (heads_first(gen, transposed=True) for _ in range(3))
    idx, cnt, pattern = templates(gen)
    heads = torch.tensor([True, False, True])
    cos, sin = torch.randn(1, S, 1, D, generator=gen), torch.randn(1, S, 1, D, generator=gen)

    def attention(q, k, v, idx, cnt, pattern, heads):
        out, lse = block_sparse_attention(q, k, v, idx, cnt, head_pattern=pattern, block_size=BS, order=ORDER,
                                          reordered_heads=heads, return_lse=True)
        return out.transpose(1, 2).flatten(2), lse

    def block_lse(q, k):
        return sampled_block_lse(q[:, :, :5], k, block_size=BS, order=ORDER).softmax(-1)

    def reorder(x):
        y = reorder_tokens(x, ORDER, [0, 2])
        return y, reorder_tokens(y, ORDER, [0, 2], inverse=True)

    def rotary(q, k):
        return interleaved_rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin, convention="diffusers")

    return [
        ("block_sparse_attention", attention, (q, k, v, idx, cnt, pattern, heads)),
        ("sampled_block_lse", block_lse, (q, k)),
        ("reorder_tokens", reorder, (q,)),
        ("interleaved_rotary", rotary, (q, k)),
    ]


@pytest.mark.parametrize("name,fn,args", wrapper_calls(), ids=lambda x: x if isinstance(x, str) else "")
def test_eager_wrappers_call_the_op(name, fn, args):
    with _OpLog() as log:
        fn(*args)
    assert f"dit_sparse.{name}.default" in log.ops


@pytest.mark.parametrize("name,fn,args", wrapper_calls(), ids=lambda x: x if isinstance(x, str) else "")
def test_compile_traces_wrappers_whole(name, fn, args):
    assert torch._dynamo.explain(fn)(*args).graph_break_count == 0
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), fn(*args), rtol=0, atol=0)


def test_new_tables_patterns_and_heads_do_not_recompile():
    name, fn, args = wrapper_calls()[0]
    counter = CompileCounter()
    compiled = torch.compile(fn, fullgraph=True, backend=counter)
    q, k, v = args[:3]
    for seed in range(3):
        idx, cnt, pattern = templates(torch.Generator().manual_seed(10 + seed))
        heads = torch.tensor([seed % 2 == 0, True, seed == 1])
        torch.testing.assert_close(compiled(q, k, v, idx, cnt, pattern, heads), fn(q, k, v, idx, cnt, pattern, heads),
                                   rtol=0, atol=0)
    assert counter.frame_count == 1


def test_inductor_calls_the_opaque_op():
    """Inductor runs the op as it is (the Triton kernel here, under the interpreter): its code
    calls the op and holds none of our Triton sources, and the output keeps q's layout."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (heads_first(gen, transposed=True) for _ in range(3))
    idx, cnt, pattern = templates(gen)

    def attention(q, k, v, idx, cnt, pattern):
        return block_sparse_attention(q, k, v, idx, cnt, head_pattern=pattern, block_size=BS, backend="triton",
                                      config=CONFIG)

    out, code = run_and_get_code(torch.compile(attention, fullgraph=True, backend="inductor"), q, k, v, idx, cnt, pattern)
    expected = attention(q, k, v, idx, cnt, pattern)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert out.stride() == expected.stride()
    source = "\n".join(code)
    assert "torch.ops.dit_sparse.block_sparse_attention.default" in source
    assert "_bsa_fwd" not in source and "triton.jit" not in source


def test_the_folder_imported_as_top_level_kernels_registers_nothing(monkeypatch):
    """transformers imports a top-level `kernels` when it probes for Hugging Face's package,
    which finds this folder when the repository root is on sys.path. A second registration of
    the ops would replace and free the ones the wrappers call (then: ValueError('vector::reserve')
    or a crash, depending on what reuses the memory)."""
    monkeypatch.syspath_prepend(str(Path(dit_sparse.kernels.__file__).parents[1]))
    monkeypatch.delitem(sys.modules, "kernels", raising=False)
    assert importlib.import_module("kernels").__all__ == []
    modules = {"block_sparse_attention": "block_sparse_attention", "sampled_block_lse": "block_lse",
               "reorder_tokens": "reorder", "interleaved_rotary": "rotary"}
    for name, module in modules.items():
        registered = getattr(importlib.import_module(f"dit_sparse.kernels.{module}"), f"_{name}_op")
        assert torch._library.custom_ops.OPDEFS[f"dit_sparse::{name}"] is registered
