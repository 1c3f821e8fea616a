import pytest

from dit_sparse import SparseAttentionConfig, TokenGrid


def test_token_grid_counts_and_orders():
    g = TokenGrid(frames=3, height=4, width=5, text_len=7, text_position="suffix")
    assert g.positions == 20 and g.num_video_tokens == 60 and g.num_tokens == 67
    assert (g.order.frames, g.order.positions, g.order.video_start) == (3, 20, 0)
    image = TokenGrid(frames=1, height=4, width=6, text_len=2, text_position="prefix")
    # images: row-major native, column-major reordered (rows play the role of frames)
    assert (image.order.frames, image.order.positions, image.order.video_start) == (4, 6, 2)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(frames=0, height=2, width=2), "frames"),
        (dict(frames=2, height=-1, width=2), "height"),
        (dict(frames=2, height=2, width=2.5), "width"),
        (dict(frames=2, height=2, width=2, text_position="middle"), "text_position"),
        (dict(frames=2, height=2, width=2, text_len=-3, text_position="prefix"), "text_len"),
        (dict(frames=2, height=2, width=2, text_len=3), "text_len"),
    ],
)
def test_token_grid_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=f"TokenGrid.{field}"):
        TokenGrid(**kwargs)


def test_config_defaults_and_dense_steps():
    c = SparseAttentionConfig()
    assert (c.dense_steps, c.dense_layers, c.num_sampled_queries, c.block_size, c.backend) == (0.2, 1, 64, 128, "auto")
    assert c.num_dense_steps(50) == 10
    assert SparseAttentionConfig(dense_steps=1.0).num_dense_steps(7) == 7
    assert SparseAttentionConfig(dense_steps=3).num_dense_steps(50) == 3
    assert SparseAttentionConfig(dense_steps=80).num_dense_steps(50) == 50
    assert SparseAttentionConfig(dense_steps=0).num_dense_steps(50) == 0


def test_presets_order_quality_over_speed():
    q, b, f = (SparseAttentionConfig.preset(n) for n in ("quality", "balanced", "fast"))
    assert q.recall > b.recall > f.recall
    assert q.dense_steps >= b.dense_steps >= f.dense_steps
    assert SparseAttentionConfig.preset("fast", density=0.25).density == 0.25


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(dense_steps=1.5), "dense_steps"),
        (dict(dense_steps=-1), "dense_steps"),
        (dict(dense_steps="all"), "dense_steps"),
        (dict(dense_layers=-1), "dense_layers"),
        (dict(refresh_every=1.5), "refresh_every"),
        (dict(num_sampled_queries=0), "num_sampled_queries"),
        (dict(block_size=100), "block_size"),
        (dict(backend="cuda"), "backend"),
        (dict(recall=0.0), "recall"),
        (dict(recall=1.2), "recall"),
        (dict(density=0.0), "density"),
    ],
)
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=f"SparseAttentionConfig.{field}="):
        SparseAttentionConfig(**kwargs)


def test_preset_errors_name_what_is_allowed():
    with pytest.raises(ValueError, match="balanced"):
        SparseAttentionConfig.preset("turbo")
    with pytest.raises(ValueError, match="no field"):
        SparseAttentionConfig.preset("fast", sparsity=0.3)
