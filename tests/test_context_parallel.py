"""Sparse attention under diffusers' Ulysses context parallelism, on the CPU with gloo.

diffusers' context parallelism runs on the CPU with torch.distributed's gloo backend (device
mesh on "cpu", functional all-to-all and all-gather) but for one call: diffusers 0.42.1's
`ModelMixin._resolve_parallel_config` (from `enable_parallelism`) takes the rank's device as
`torch.device(device_type, rank % torch.accelerator.device_count())`, a division by zero where
there is no accelerator. The spawned ranks therefore report one accelerator; the device that
makes is cpu:0, the CPU.

Two ranks run tiny Wan, Flux and LTX-Video transformers (random weights, 4 heads) with
`ContextParallelConfig(ulysses_degree=2)` and fixed-density sparse attention; the test process
runs the same models in one process and compares outputs and per-head plans.
"""

import dataclasses
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from diffusers import (ContextParallelConfig, FluxPipeline, FluxTransformer2DModel, LTXVideoTransformer3DModel,
                       WanTransformer3DModel)
from diffusers.models import attention_dispatch
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

import dit_sparse
from dit_sparse import SparseAttentionConfig, TokenGrid
from dit_sparse import context_parallel as cp
from dit_sparse import hooks
from dit_sparse.families.wan import WAN
from dit_sparse.plan_cache import PlanCache
from dit_sparse.runtime import SparseRuntime

HEADS, RANKS = 4, 2
TEXT_DIM, TEXT_LEN = 32, 8
SPARSE = dict(density=0.3, dense_steps=0, dense_layers=0, backend="torch", block_size=16, num_sampled_queries=16)
TIMESTEPS = (900.0, 700.0)  # two calls: the second one runs under the plans the first one profiled
WORKER_TIMEOUT_S = 240


def wan():
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    gen = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 16, 4, 16, 16, generator=gen),  # 4 x 8 x 8 tokens
                  encoder_hidden_states=torch.randn(1, TEXT_LEN, TEXT_DIM, generator=gen))
    return model, inputs, lambda t: torch.tensor([t])


def flux():
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=HEADS, joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
        axes_dims_rope=[4, 4, 8],
    )
    gen = torch.Generator().manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(1, 8 * 12, 4, generator=gen),
        encoder_hidden_states=torch.randn(1, TEXT_LEN, TEXT_DIM, generator=gen),
        pooled_projections=torch.randn(1, TEXT_DIM, generator=gen), txt_ids=torch.zeros(TEXT_LEN, 3),
        img_ids=FluxPipeline._prepare_latent_image_ids(1, 8, 12, "cpu", torch.float32),
    )
    return model, inputs, lambda t: torch.tensor([t / 1000])


def ltx():
    model = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=HEADS, attention_head_dim=12,
        cross_attention_dim=HEADS * 12, num_layers=2, caption_channels=TEXT_DIM,
    )
    gen = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 4 * 8 * 8, 8, generator=gen),
                  encoder_hidden_states=torch.randn(1, TEXT_LEN, TEXT_DIM, generator=gen),
                  encoder_attention_mask=None, num_frames=4, height=8, width=8)
    # diffusers 0.42.1's own LTX under Ulysses, without dit_sparse: with a text mask its cross-attention
    # fails in SDPA (the mask keeps the head count of the whole model), and without the argument the
    # split hook fails ("Expected 3 arguments but got 0"); an explicit None runs
    return model, inputs, lambda t: torch.tensor([t])


# (builder, config overrides, whether dit_sparse is applied before enable_parallelism)
CASES = {
    "wan": (wan, dict(dense_layers=1), False),  # layer 0 runs dense inside the sparse backend's op
    "flux": (flux, {}, True),
    "ltx": (ltx, {}, True),
}


def build(name):
    torch.manual_seed(0)
    model, inputs, timestep = CASES[name][0]()
    return model.eval(), inputs, timestep


def config(name):
    return SparseAttentionConfig(**{**SPARSE, **CASES[name][1]})


def run(model, inputs, timestep):
    with torch.no_grad():
        # clone: under context parallelism the output is an AsyncCollectiveTensor (the gathered one)
        return [model(**inputs, timestep=timestep(t), return_dict=False)[0].clone() for t in TIMESTEPS]


def plans(handle):
    """(layer, branch, first head, end head) -> the plan's (B, H) pattern indices."""
    out = {}
    for (layer, branch), plan in handle.runtimes["transformer"].cache.plans.items():
        heads = plan.heads or range(plan.shape[1])
        out[(layer, branch, heads.start, heads.stop)] = plan.patterns.clone()
    return out


def counts(handle):
    stats = handle.stats()
    return {k: getattr(stats, k) for k in ("sparse_calls", "dense_calls", "num_profiles", "steps")}


# ---- in one process: the registry entry, the op on a subset of heads, the sequence layout ---------

def test_the_backend_is_registered_as_diffusers_registers_its_own():
    member = cp.sparse_backend()
    registry = attention_dispatch._AttentionBackendRegistry
    assert cp.sparse_backend() is member  # registered once
    assert AttentionBackendName("dit_sparse") is member is AttentionBackendName.DIT_SPARSE
    assert member in registry.list_backends() and registry._is_context_parallel_available(member)
    assert {"sparse_call", "_parallel_config", "scale"} <= registry._supported_arg_names[member]


def test_without_a_sparse_call_the_backend_is_diffusers_native_attention():
    """set_attention_backend("dit_sparse") on a stock model: every call is native SDPA."""
    model, inputs, timestep = build("wan")
    cp.sparse_backend()
    expected = run(model, inputs, timestep)
    model.set_attention_backend("dit_sparse")
    assert model.blocks[0].attn2.processor._attention_backend == "dit_sparse"
    for got, want in zip(run(model, inputs, timestep), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_changed_diffusers_internals_are_a_clear_error(monkeypatch):
    registry = attention_dispatch._AttentionBackendRegistry
    monkeypatch.setattr(registry, "_supports_context_parallel", sorted(registry._supports_context_parallel))
    expected = r"_supports_context_parallel.*tested with, diffusers 0\.42\.1"
    with pytest.raises(cp.DiffusersInternalsError, match=expected):
        cp._check_diffusers_internals()
    monkeypatch.undo()
    monkeypatch.delattr(attention_dispatch, "TemplatedUlyssesAttention")
    with pytest.raises(cp.DiffusersInternalsError, match="TemplatedUlyssesAttention"):
        cp._check_diffusers_internals()


def qkv(heads, grid, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, grid.num_tokens, heads, 16, generator=gen) for _ in range(3)]


def test_the_op_on_a_subset_of_heads_plans_them_by_global_index():
    """What a rank's op sees: the whole sequence for heads 2 and 3 of 4. Their plan records those
    global indices and equals heads 2-3 of the plan of all four; so does the output."""
    grid = TokenGrid(4, 8, 8)
    q, k, v = qkv(HEADS, grid)
    whole, part = PlanCache(SparseAttentionConfig(**SPARSE)), PlanCache(SparseAttentionConfig(**SPARSE))
    calls = [cache.prepare((0, 0), layer=0, step=0, num_steps=None, grid=grid, device="cpu") for cache in (whole, part)]
    expected = cp.attend_heads(q, k, v, cp.SparseCall(calls[0], grid))
    got = cp.attend_heads(q[:, :, 2:], k[:, :, 2:], v[:, :, 2:], cp.SparseCall(calls[1], grid), heads=range(2, 4),
                          shards=2)
    torch.testing.assert_close(got, expected[:, :, 2:], atol=1e-6, rtol=1e-5)
    plan, full_plan = part.plans[(0, 0)], whole.plans[(0, 0)]
    assert torch.equal(plan.patterns, full_plan.patterns[:, 2:]) and full_plan.mean_density < 0.9
    assert plan.heads == range(2, 4) and full_plan.heads is None


def test_the_op_runs_full_attention_where_the_layer_is_dense():
    grid = TokenGrid(4, 8, 8)
    q, k, v = qkv(2, grid)
    out = cp.attend_heads(q, k, v, cp.SparseCall(None, grid), heads=range(0, 2), shards=2)
    dense = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    torch.testing.assert_close(out, dense)


@pytest.mark.parametrize("position", ["prefix", "suffix"])
def test_gathered_positions_undo_the_ulysses_layout(position):
    """Each of 2 ranks holds half the text and half the video, in the grid's layout; the gathered
    sequence (rank 0's, then rank 1's) maps back to the grid's order."""
    grid = TokenGrid(2, 2, 3, 4, position)
    tokens = torch.arange(grid.num_tokens)
    text, video = (tokens[:4], tokens[4:]) if position == "prefix" else (tokens[12:], tokens[:12])
    shards = [torch.cat((t, v) if position == "prefix" else (v, t)) for t, v in zip(text.chunk(2), video.chunk(2))]
    gathered = torch.cat(shards)
    positions = cp.gathered_positions(grid, 2, "cpu")
    assert torch.equal(positions, gathered)
    assert torch.equal(gathered[positions.argsort()], tokens)
    assert cp.gathered_positions(grid, 1, "cpu") is None and cp.gathered_positions(TokenGrid(2, 2, 3), 2, "cpu") is None
    with pytest.raises(ValueError, match="do not split evenly into 3 sequence shards"):
        cp.gathered_positions(grid, 3, "cpu")


def test_unsupported_context_parallel_settings_are_clear_errors():
    def parallel(**cp_config):
        return SimpleNamespace(context_parallel_config=SimpleNamespace(
            **{"ring_degree": 1, "ulysses_degree": 2, "ulysses_anything": False, **cp_config}))

    assert cp.ulysses_degree(parallel()) == 2
    with pytest.raises(ValueError, match="Ulysses context parallelism only.*ring_degree=2"):
        cp.ulysses_degree(parallel(ring_degree=2, ulysses_degree=1))
    with pytest.raises(ValueError, match="ulysses_anything"):
        cp.ulysses_degree(parallel(ulysses_anything=True))
    grid = TokenGrid(4, 8, 8)
    q, k, v = qkv(3, grid)
    cache = PlanCache(SparseAttentionConfig(**SPARSE))
    call = cp.SparseCall(cache.prepare((0, 0), layer=0, step=0, num_steps=None, grid=grid, device="cpu"), grid)
    with pytest.raises(ValueError, match="3 attention heads do not split evenly over ulysses_degree=2"):
        dispatch_attention_fn(q, k, v, attention_kwargs={"sparse_call": call}, backend=cp.sparse_backend(),
                              parallel_config=parallel())
    with pytest.raises(ValueError, match="does not support attn_mask"):
        dispatch_attention_fn(q, k, v, attn_mask=torch.ones(1, grid.num_tokens, dtype=torch.bool),
                              attention_kwargs={"sparse_call": call}, backend=cp.sparse_backend())
    with pytest.raises(ValueError, match="holds 128 tokens but the grid has 256"):
        cp.attend_heads(q[:, :128], k[:, :128], v[:, :128], call)


def test_families_without_context_parallel_support_refuse_it():
    """A family whose processors do not declare context parallelism (e.g. Qwen-Image, which has a
    diffusers _cp_plan) gets a clear error at the first call under it."""
    model, inputs, timestep = build("wan")
    family = dataclasses.replace(WAN, context_parallel=False)
    hook = hooks.StepHook(SparseRuntime(SparseAttentionConfig(**SPARSE)), family)
    hook.begin_call(model, (), {**inputs, "timestep": timestep(900.0)})
    model._parallel_config = SimpleNamespace(context_parallel_config=object())
    with pytest.raises(ValueError, match="does not support context parallelism for WanTransformer3DModel"):
        hook.begin_call(model, (), {**inputs, "timestep": timestep(900.0)})


# ---- the two ranks -----------------------------------------------------------------------------

def rank_main(rank, port, out_dir):
    torch.accelerator.device_count = lambda: 1  # see the module docstring: diffusers divides by it
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=RANKS)
    results = {}
    try:
        for name, (_, _, apply_first) in CASES.items():
            model, inputs, timestep = build(name)
            parallel = ContextParallelConfig(ulysses_degree=RANKS)
            if apply_first:
                handle = dit_sparse.apply(model, config(name))
                model.enable_parallelism(config=parallel)
            else:
                model.enable_parallelism(config=parallel)
                handle = dit_sparse.apply(model, config(name))
            results[name] = dict(outputs=run(model, inputs, timestep), plans=plans(handle), counts=counts(handle),
                                 stats_heads={layer: {b: v.heads for b, v in branches.items()}
                                              for layer, branches in handle.stats().layers.items()})
            if name == "flux":  # remove() hands enable_parallelism's setting back to the stock processors
                handle.remove()
                results[name]["removed"] = run(model, inputs, timestep)
            if name == "wan":
                results[name]["backward"] = backward_error(handle, model)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # no rank leaves while another still exchanges (gloo aborts the process)
    finally:
        dist.destroy_process_group()


def backward_error(handle, model):
    """The sparse backend under Ulysses has no backward pass: the error it gives."""
    processor = model.blocks[1].attn1.processor
    q, k, v = (torch.randn(1, 4 * 8 * 8 // RANKS, HEADS, 16, requires_grad=True) for _ in range(3))
    out = cp.context_parallel_attention(q, k, v, processor.current, handle.runtimes["transformer"].grid,
                                        processor._parallel_config)
    try:
        out.sum().backward()
    except NotImplementedError as error:
        return str(error)
    return None


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run both ranks once for every case; their results by rank."""
    out_dir = tmp_path_factory.mktemp("context_parallel")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.spawn(rank_main, args=(port, str(out_dir)), nprocs=RANKS, join=False)
    deadline = WORKER_TIMEOUT_S
    while not context.join(timeout=5):
        deadline -= 5
        if deadline <= 0:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the context-parallel ranks did not finish in {WORKER_TIMEOUT_S} s")
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(RANKS)]


@pytest.fixture(scope="module")
def single():
    """Every case in one process, without context parallelism: sparse, and stock (Flux)."""
    results = {}
    for name in CASES:
        model, inputs, timestep = build(name)
        stock = run(model, inputs, timestep) if name == "flux" else None
        handle = dit_sparse.apply(model, config(name))
        results[name] = dict(outputs=run(model, inputs, timestep), plans=plans(handle), counts=counts(handle),
                             stock=stock, mean_density=handle.stats().mean_density)
    return results


# ---- the tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_ulysses_output_equals_the_single_process_sparse_output(ranks, single, name):
    assert single[name]["mean_density"] < 0.9  # the heads are sparse
    for rank in ranks:
        for got, expected in zip(rank[name]["outputs"], single[name]["outputs"], strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(CASES))
def test_each_rank_plans_its_own_global_heads(ranks, single, name):
    """Rank r holds heads 2r, 2r+1 of 4: its plans are keyed by those global indices and equal
    the single-process plans of those heads; profiling and call counts match the single run."""
    local = HEADS // RANKS
    for r, rank in enumerate(ranks):
        expected = {(layer, branch, r * local, (r + 1) * local): patterns[:, r * local:(r + 1) * local]
                    for (layer, branch, _, _), patterns in single[name]["plans"].items()}
        assert rank[name]["plans"].keys() == expected.keys() and expected
        for key, patterns in expected.items():
            assert torch.equal(rank[name]["plans"][key], patterns)
        assert rank[name]["counts"] == single[name]["counts"]
        assert all(heads == (r * local, (r + 1) * local)
                   for branches in rank[name]["stats_heads"].values() for heads in branches.values())
    assert single[name]["counts"]["sparse_calls"] > 0


def test_ranks_hold_different_heads(ranks):
    keys = [{key[2:] for key in rank["wan"]["plans"]} for rank in ranks]
    assert keys == [{(0, 2)}, {(2, 4)}]


def test_remove_under_context_parallelism_restores_the_stock_output(ranks, single):
    for rank in ranks:
        for got, expected in zip(rank["flux"]["removed"], single["flux"]["stock"], strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_backward_under_ulysses_is_a_clear_error(ranks):
    assert all("for inference" in rank["wan"]["backward"] for rank in ranks)
