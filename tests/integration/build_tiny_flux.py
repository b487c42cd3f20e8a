"""Build a tiny, random, diffusers-format FluxPipeline directory fully offline (~1 MB, ~10 s).

Usage: ``python build_tiny_flux.py OUTDIR``. The same directory loads in diffusers' ``FluxPipeline``,
in SGLang's native Flux pipeline (``--model-id FLUX.1-dev --model-path OUTDIR``) and in vLLM-Omni's
native ``FluxPipeline``. Tokenizers are built from tiny vocabularies so nothing is fetched from the
Hugging Face Hub. The VAE has four levels (scale 8): a 32x32 image is only 16 latent tokens, and
vLLM-Omni's 512x512 start-up warm-up request is 1,024 tokens (about a second).
"""

from __future__ import annotations

import json
import os
import shutil
import string
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

WIDTH = 32  # hidden width of the text encoders, = joint_attention_dim of the transformer


def build_clip_tokenizer(out: str) -> None:
    """A character-level CLIP BPE tokenizer (no merges) saved as ``out/tokenizer``."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits + ".,!?'-":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    source = os.path.join(out, "clip_src")
    os.makedirs(source, exist_ok=True)
    with open(os.path.join(source, "vocab.json"), "w") as handle:
        json.dump(vocab, handle)
    with open(os.path.join(source, "merges.txt"), "w") as handle:
        handle.write("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        vocab_file=os.path.join(source, "vocab.json"),
        merges_file=os.path.join(source, "merges.txt"),
        model_max_length=77,
    )
    tokenizer.save_pretrained(os.path.join(out, "tokenizer"))
    shutil.rmtree(source)


def build_t5_tokenizer(out: str) -> None:
    """A character-level unigram T5 tokenizer saved as ``out/tokenizer_2``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits]
    pieces += [("\u2581" + c, -2.5) for c in string.ascii_lowercase]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    target = os.path.join(out, "tokenizer_2")
    os.makedirs(target, exist_ok=True)
    tokenizer.save(os.path.join(target, "tokenizer.json"))
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    with open(os.path.join(target, "tokenizer_config.json"), "w") as handle:
        json.dump(
            {"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "extra_ids": 0, **special},
            handle,
        )
    with open(os.path.join(target, "special_tokens_map.json"), "w") as handle:
        json.dump(special, handle)


def build_models(out: str) -> None:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=2,
        num_single_layers=4,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=WIDTH,
        pooled_projection_dim=WIDTH,
        axes_dims_rope=[4, 6, 6],
    ).save_pretrained(f"{out}/transformer")
    AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4, 4, 4, 4),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    ).save_pretrained(f"{out}/vae")
    FlowMatchEulerDiscreteScheduler().save_pretrained(f"{out}/scheduler")
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=100,
            hidden_size=WIDTH,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            projection_dim=WIDTH,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    ).save_pretrained(f"{out}/text_encoder")
    T5EncoderModel(
        T5Config(
            vocab_size=100,
            d_model=WIDTH,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            is_encoder_decoder=False,
            decoder_start_token_id=0,
        )
    ).save_pretrained(f"{out}/text_encoder_2")


def write_model_index(out: str) -> None:
    index = {
        "_class_name": "FluxPipeline",
        "_diffusers_version": "0.37.0",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    with open(os.path.join(out, "model_index.json"), "w") as handle:
        json.dump(index, handle, indent=1)


def build(out: str) -> None:
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    build_clip_tokenizer(out)
    build_t5_tokenizer(out)
    build_models(out)
    write_model_index(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: build_tiny_flux.py OUTDIR")
    build(sys.argv[1])
    print(f"tiny Flux written to {sys.argv[1]}")
