"""BAGEL through CacheDiTBackend, on a faithful reconstruction of vLLM-Omni 0.30's structure.

The real ``Qwen2MoTModel`` cannot be built here (its layers need vLLM's tensor-parallel runtime),
so this mirrors what matters to caching, read from vllm_omni/diffusion/models/bagel/
bagel_transformer.py: the pipeline reaches the model at ``language_model.model``; the model loops
``for layer_idx, decoder_layer in enumerate(self.layers)`` and calls each layer with keywords —
``hidden_states=…, encoder_hidden_states=None, …, past_key_values=<NaiveCache>, mode=…`` — and each
layer returns ``(packed_query_sequence, past_key_values)``. So under Pattern_0 the "encoder" slot
carries the KV-cache object, not a tensor.
"""

import copy

import torch

import dit_cache_backend as dcb
from dit_cache_backend.backend import CacheDiTBackend


class NaiveCache:
    """Stand-in for BAGEL's KV cache: a plain object, updated in place, returned by every layer."""

    def __init__(self, num_layers: int) -> None:
        self.key_cache = {i: None for i in range(num_layers)}


class Qwen2MoTDecoderLayer(torch.nn.Module):
    def __init__(self, hidden: int, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.mlp = torch.nn.Linear(hidden, hidden)

    def forward(
        self,
        hidden_states,
        encoder_hidden_states=None,
        packed_query_sequence=None,
        query_lens=None,
        packed_query_position_embeddings=None,
        past_key_values=None,
        update_past_key_values=True,
        is_causal=True,
        mode="und",
        packed_vae_token_indexes=None,
        packed_text_indexes=None,
    ):
        sequence = hidden_states if packed_query_sequence is None else packed_query_sequence
        sequence = sequence + 0.1 * torch.tanh(self.mlp(sequence) + packed_query_position_embeddings)
        if update_past_key_values:
            past_key_values.key_cache[self.layer_idx] = sequence.detach()
        return sequence, past_key_values


class Qwen2MoTModel(torch.nn.Module):
    def __init__(self, hidden: int = 16, num_layers: int = 6) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(Qwen2MoTDecoderLayer(hidden, i) for i in range(num_layers))
        self.norm = torch.nn.LayerNorm(hidden)

    def forward(self, packed_query_sequence, packed_query_position_ids, past_key_values, mode="gen"):
        embeddings = torch.sin(packed_query_position_ids)[:, None]
        for layer_idx, decoder_layer in enumerate(self.layers):
            packed_query_sequence, past_key_values = decoder_layer(
                hidden_states=packed_query_sequence,
                encoder_hidden_states=None,
                query_lens=None,
                packed_query_position_embeddings=embeddings,
                past_key_values=past_key_values,
                update_past_key_values=False,
                is_causal=False,
                mode=mode,
            )
        return self.norm(packed_query_sequence), past_key_values


class LanguageModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = Qwen2MoTModel()


class BagelPipeline:
    """The attributes CacheDiTBackend touches; the denoising loop is a plain Euler-like update."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.language_model = LanguageModel()

    def __call__(self, num_inference_steps: int):
        cache = NaiveCache(len(self.language_model.model.layers))
        latent = torch.linspace(-1, 1, 8 * 16).reshape(8, 16)
        outputs, caches = [], []
        for step in range(num_inference_steps):
            position = torch.full((8,), 0.05 * step)
            with torch.no_grad():
                velocity, returned = self.language_model.model(latent, position, cache)
            caches.append(returned)
            outputs.append(velocity)
            latent = latent - velocity / num_inference_steps
        return outputs, caches, cache


FLAT = {"Fn_compute_blocks": 1, "max_warmup_steps": 2, "residual_diff_threshold": 0.5,
        "max_continuous_cached_steps": -1}


def test_the_bagel_enabler_caches_the_language_model_layers():
    pipeline = BagelPipeline()
    backend = CacheDiTBackend(FLAT)
    backend.enable(pipeline)
    backend.refresh(pipeline, 10)
    pipeline(10)
    stats = dcb.summary(pipeline.language_model.model, logging=False)[0]
    assert stats.name == "transformer.layers"
    assert stats.cached_steps and len(stats.cached_steps) < 10


def test_the_kv_cache_object_passes_through_every_step_untouched():
    pipeline = BagelPipeline()
    backend = CacheDiTBackend(FLAT)
    backend.enable(pipeline)
    backend.refresh(pipeline, 10)
    _, caches, cache = pipeline(10)
    assert all(returned is cache for returned in caches)


def test_computed_bagel_steps_are_bit_exact():
    pipeline = BagelPipeline()
    reference_model = copy.deepcopy(pipeline.language_model.model)
    backend = CacheDiTBackend(FLAT)
    backend.enable(pipeline)
    backend.refresh(pipeline, 10)
    inputs = []
    handle = pipeline.language_model.model.register_forward_pre_hook(
        lambda module, args: inputs.append(copy.deepcopy(args))
    )
    outputs, _, _ = pipeline(10)
    handle.remove()
    decisions = dcb.summary(pipeline.language_model.model, logging=False)[0].decisions
    with torch.no_grad():
        for decision, args, output in zip(decisions, inputs, outputs):
            expected, _ = reference_model(*args)
            assert torch.equal(output, expected) == (not decision.cached), f"step {decision.step}"


def test_disabling_bagel_restores_the_uncached_outputs():
    reference, _, _ = BagelPipeline()(10)
    pipeline = BagelPipeline()
    backend = CacheDiTBackend(FLAT)
    backend.enable(pipeline)
    backend.refresh(pipeline, 10)
    pipeline(10)
    backend.disable(pipeline)
    outputs, _, _ = pipeline(10)
    assert all(torch.equal(a, b) for a, b in zip(outputs, reference))
