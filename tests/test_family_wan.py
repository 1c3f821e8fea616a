import pytest
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

import dit_sparse
from dit_sparse import SparseAttentionConfig

import family_checks as checks

TEXT_DIM = 32


BRANCHES = ["cond", "uncond"]  # CFG branches as the runtime names them

def build(transformer_2=False):
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])

    def transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=3, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )

    extra = dict(transformer_2=transformer(), boundary_ratio=0.5) if transformer_2 else {}
    return WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer(),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), **extra)


def call_kwargs():
    gen = torch.Generator().manual_seed(0)
    return dict(
        prompt_embeds=torch.randn(1, 8, TEXT_DIM, generator=gen), negative_prompt_embeds=torch.randn(1, 8, TEXT_DIM, generator=gen),
        height=64, width=64, num_frames=17, num_inference_steps=3, guidance_scale=5.0,
        generator=torch.Generator().manual_seed(1), output_type="latent",
    )


def test_wan22_two_transformers_both_sparse():
    pipe = build(transformer_2=True)
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0, dense_layers=0, **checks.TINY))
    pipe(**{**call_kwargs(), "num_inference_steps": 4})
    stats = handle.stats()
    assert set(handle.runtimes) == {"transformer", "transformer_2"}
    assert {name.split(".")[0] for name in stats.layers} == {"transformer", "transformer_2"}
    # the boundary splits the steps: high-noise steps on one transformer, the rest on the other
    steps = stats.steps
    high = steps["transformer"]["cond"]["sparse"]
    low = steps["transformer_2"]["cond"]["sparse"]
    assert high and low and max(high) < min(low) and sorted(high + low) == [0, 1, 2, 3]
