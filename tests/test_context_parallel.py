"""parallelism_config on diffusers' context parallelism, 2 ranks under torchrun on gloo (CPU).

Each case launches tests/distributed/cp_worker.py once (one process per rank, a 60 s gloo timeout
so that ranks that diverge fail fast instead of hanging) and asserts on the JSON every rank writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

WORKER = Path(__file__).parent / "distributed" / "cp_worker.py"
RANKS = 2

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)


def launch(case: str, out: Path) -> list:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={RANKS}", str(WORKER), case, str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    files = [out / f"rank{rank}.json" for rank in range(RANKS)]
    if not all(f.exists() for f in files):
        pytest.fail(f"torchrun {case} exited {done.returncode} without results:\n{done.stderr[-4000:]}")
    return [json.loads(f.read_text()) for f in files]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cache = {}

    def get(case: str) -> list:
        if case not in cache:
            cache[case] = launch(case, tmp_path_factory.mktemp(case))
        return cache[case]

    return get


@pytest.mark.parametrize("case, degrees", [("ulysses", (1, 2)), ("ring", (2, 1))])
def test_seeds_yaml_makes_the_transformer_context_parallel(results, case, degrees):
    for rank in results(case):
        assert (rank["ring_degree"], rank["ulysses_degree"]) == degrees  # "auto" = world size
        assert rank["world"] == RANKS


@pytest.mark.parametrize("case", ["ulysses", "ring"])
def test_every_rank_takes_the_single_process_decisions(results, case):
    ranks = results(case)
    assert ranks[0]["decisions"] == ranks[1]["decisions"] == ranks[0]["single_decisions"]
    assert ranks[0]["cached_steps"]  # the seeds' threshold caches steps on this model
    assert ranks[0]["diffs"] == ranks[1]["diffs"]
    for rank in ranks:
        gap = max(abs(rank["diffs"][k] - rank["single_diffs"][k]) for k in rank["single_diffs"])
        assert gap < 1e-6


@pytest.mark.parametrize("case", ["ulysses", "ring"])
def test_context_parallel_output_matches_one_process(results, case):
    for rank in results(case):
        assert rank["plain_vs_single"] < 1e-5
        assert rank["cached_vs_single"] < 1e-5


@pytest.mark.parametrize("case", ["ulysses", "ring"])
def test_threshold_zero_is_bit_identical_to_the_uncached_parallel_run(results, case):
    for rank in results(case):
        assert rank["threshold0_equal_uncached"] is True


def test_without_the_cross_rank_reduction_the_ranks_diffs_differ(results):
    """Negative control: the checks above fail when each rank decides on its own shard."""
    ranks = results("no_reduce")
    assert ranks[0]["diffs"] != ranks[1]["diffs"]
    gap = max(abs(ranks[0]["diffs"][k] - ranks[0]["single_diffs"][k]) for k in ranks[0]["diffs"])
    assert gap > 1e-4


def test_uneven_shards_reduce_to_the_single_process_ratio(results):
    for rank in results("uneven"):
        assert rank["reduced"] == pytest.approx(rank["single"], rel=1e-6)
        assert rank["mean_of_shards"] != pytest.approx(rank["single"], rel=1e-3)
