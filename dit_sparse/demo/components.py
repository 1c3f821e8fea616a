"""Builders of the demo pipeline: a word-level tokenizer and a small random-init WanPipeline.

The architecture is Wan 2.1's (UMT5 text encoder, causal 3D VAE with 4x time and 8x space
compression, WanTransformer3DModel, UniPC flow-matching scheduler), only narrower and
shallower, so `dit_sparse.apply` treats the demo exactly like a real Wan checkpoint.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from .clips import VOCABULARY
from .vae_init import block_average_init

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in UMT5

BLOCK_AVERAGE_VAE = ("demo2",)  # sizes whose VAE starts as block_average_init's codec

SIZES = {
    "demo": {
        "text_encoder": dict(d_model=128, d_kv=32, num_heads=4, d_ff=512, num_layers=2),
        "vae": dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
        "transformer": dict(num_layers=8, num_attention_heads=4, attention_head_dim=64, ffn_dim=1024, freq_dim=256),
    },
    # Issue 18's demo: 8 heads, trained on `scenes` at 33 frames of 512x512 (9216 tokens). 9,895,232
    # transformer + 3,602,371 VAE + 529,280 text encoder parameters: 28.1 MB saved in fp16 (26.8 MiB).
    # Heads of 32 keep 10 layers (80 heads) under 30 MB; heads of 64 would leave room for 4 layers.
    # Its VAE starts as a block-average codec (vae_init.block_average_init): from random weights it
    # learned too slowly to pass the prompt check (docs/results/demo2_attempt1).
    "demo2": {
        "text_encoder": dict(d_model=128, d_kv=32, num_heads=4, d_ff=512, num_layers=2),
        "vae": dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
        "transformer": dict(num_layers=10, num_attention_heads=8, attention_head_dim=32, ffn_dim=768, freq_dim=256),
    },
    "tiny": {
        "text_encoder": dict(d_model=32, d_kv=16, num_heads=2, d_ff=64, num_layers=1),
        "vae": dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=1),
        "transformer": dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, ffn_dim=64, freq_dim=32),
    },
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over VOCABULARY with UMT5's special ids; appends </s> to every text.

    Lower-cases, turns punctuation into spaces and splits on whitespace; words outside the
    vocabulary become <unk>.
    """
    vocab = {word: i for i, word in enumerate(SPECIAL_TOKENS + tuple(VOCABULARY))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\w\s]"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def build_pipeline(size: str = "demo", seed: int = 0) -> WanPipeline:
    """A random-init demo WanPipeline (float32) of one of SIZES."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    spec = SIZES[size]
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_config = UMT5Config(
        vocab_size=len(tokenizer), dropout_rate=0.0, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, tie_word_embeddings=False, **spec["text_encoder"],
    )
    text_encoder = UMT5EncoderModel(text_config)
    z_dim = spec["vae"]["z_dim"]
    vae = AutoencoderKLWan(
        temperal_downsample=[False, True, True], latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim, **spec["vae"]
    )
    if size in BLOCK_AVERAGE_VAE:
        block_average_init(vae)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), in_channels=z_dim, out_channels=z_dim, text_dim=text_config.d_model,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024, **spec["transformer"],
    )
    with torch.no_grad():  # start from a zero prediction: the first steps do not fight a random output
        transformer.proj_out.weight.zero_()
        transformer.proj_out.bias.zero_()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
    )
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


def save_pipeline(pipe: WanPipeline, out: str | os.PathLike, dtype: torch.dtype = torch.float16) -> int:
    """Save `pipe` in `dtype` (shards of at most 12 MB) without changing `pipe`; returns the folder size in bytes.

    The tokenizer is recorded as PreTrainedTokenizerFast, a class every transformers version
    has (transformers 5 would write its own TokenizersBackend, which 4.x cannot load).
    """
    components = {
        name: copy.deepcopy(module).to("cpu", dtype) if isinstance(module, torch.nn.Module) else module
        for name, module in pipe.components.items()
    }
    WanPipeline(**components).save_pretrained(out, max_shard_size="12MB")
    out = Path(out)
    for path, key in ((out / "model_index.json", "tokenizer"), (out / "tokenizer" / "tokenizer_config.json", None)):
        config = json.loads(path.read_text())
        if key:
            config[key] = ["transformers", "PreTrainedTokenizerFast"]
        else:
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
