"""torch.compile with caching: regional and whole-transformer compilation, no recompiles."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import dit_cache_backend as dcb
from dit_cache_backend.tiny_model import tiny_flux_inputs, tiny_flux_pipeline

STEPS = 8
CONFIG = dict(Fn_compute_blocks=1, max_warmup_steps=2, residual_diff_threshold=0.12)


def generate(pipe, seed):
    with torch.no_grad():
        return pipe(**tiny_flux_inputs(1, num_inference_steps=STEPS, seed=seed)).images


def eager_reference(seed):
    pipe = tiny_flux_pipeline()
    dcb.enable_cache(pipe, cache_config=dcb.DBCacheConfig(**CONFIG))
    output = generate(pipe, seed)
    return output, dcb.summary(pipe, logging=False)[0].cached_steps


def compile_blocks(transformer):
    for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
        block.compile()


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def graphs_compiled():
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize(
    "how",
    ["regional_after_enable", "repeated_blocks_after_enable", "whole_after_enable", "whole_before_enable"],
)
def test_compiled_caching_matches_eager_and_never_recompiles_after_the_first_request(how):
    pipe = tiny_flux_pipeline()
    if how == "whole_before_enable":
        pipe.transformer.compile()
    dcb.enable_cache(pipe, cache_config=dcb.DBCacheConfig(**CONFIG))
    if how == "regional_after_enable":
        compile_blocks(pipe.transformer)
    elif how == "repeated_blocks_after_enable":  # diffusers' regional compile (docs/scaling.md)
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
    elif how == "whole_after_enable":
        pipe.transformer.compile()

    first = generate(pipe, seed=0)
    after_first_request = graphs_compiled()
    for seed in (1, 2):
        generate(pipe, seed)
    assert after_first_request > 0, "something was compiled"
    assert graphs_compiled() == after_first_request, "a later request recompiled"

    expected, expected_steps = eager_reference(seed=0)
    assert dcb.summary(pipe, logging=False)[0].cached_steps == expected_steps
    first_again = generate(pipe, seed=0)
    assert torch.equal(first, first_again)
    assert torch.allclose(first, expected, atol=1e-4)


def enable(pipe, cache_type, scope):
    config_class = dcb.DBPruneConfig if cache_type == "DBPrune" else dcb.DBCacheConfig
    fields = dict(Fn_compute_blocks=1, max_warmup_steps=2, residual_diff_threshold=0.5)
    if scope == "transformer":
        dcb.enable_cache(pipe.transformer, cache_config=config_class(num_inference_steps=STEPS, **fields))
        return pipe.transformer
    dcb.enable_cache(pipe, cache_config=config_class(**fields))
    return pipe


@pytest.mark.parametrize("how", ["whole", "regional"])
@pytest.mark.parametrize("scope", ["pipeline", "transformer"])
@pytest.mark.parametrize("cache_type", ["DBCache", "DBPrune"])
def test_no_new_graph_after_the_first_request(cache_type, scope, how):
    eager_pipe = tiny_flux_pipeline()
    eager_owner = enable(eager_pipe, cache_type, scope)
    generate(eager_pipe, seed=0)
    eager_decisions = [d.cached for d in dcb.summary(eager_owner, logging=False)[0].decisions]

    pipe = tiny_flux_pipeline()
    owner = enable(pipe, cache_type, scope)
    if how == "whole":
        pipe.transformer.compile(backend="eager")
    else:
        for block in [*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks]:
            block.compile(backend="eager")
    graphs = []
    for seed in (0, 1, 2):
        generate(pipe, seed)
        graphs.append(graphs_compiled())
        if seed == 0:
            decisions = [d.cached for d in dcb.summary(owner, logging=False)[0].decisions]
    assert graphs[0] > 0, "something was compiled"
    assert graphs == [graphs[0]] * 3, f"unique graphs after each request: {graphs}"
    assert decisions == eager_decisions and any(decisions)
