"""Run cache-dit 1.5.3's own cache tests and CPU-runnable examples against both engines.

Given a local checkout of the cache-dit repository (``git clone`` of vipshop/cache-dit), every
test file under ``tests/api`` and every example under ``examples/api`` runs twice, in fresh
interpreters: once with the real cache-dit, once with this package imported as ``cache_dit``
(``dit_cache_backend.cache_dit_paths.install()``). The cache calls are the authors' own; only
what cannot run offline on a CPU is replaced, identically for both engines:

* ``FluxPipeline.from_pretrained`` gives the tiny trained Flux of this package (16x16 images, its
  text prompt turned into one of its class embeddings), ``WanPipeline.from_pretrained`` a tiny
  random two-expert Wan 2.2 (videos shrunk to 16x16x9 frames), in float32;
* ``enable_model_cpu_offload`` is a no-op (there is no accelerator to offload from);
* the examples' ``utils`` module (deleted upstream in favour of ``cache_dit._utils``) is a
  stand-in with the same flags and defaults, and ``MemoryTracker``/``GiB`` as on a CPU;
* test functions start from ``torch.manual_seed(0)``, so the random toy blocks of cache-dit's
  tests draw the same numbers under both engines when the engines decide the same.

Reported per test file and example: outcome under each engine, cached steps of every
``summary()`` entry, ``strify`` tags (saved file names) and whether the saved images / videos
are bit-identical. Usage::

    python benchmarks/cache_dit_upstream_suite.py --checkout /path/to/cache-dit [--json out.json]

Without a checkout it exits with status 2 and says so (CI has none).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import runpy
import subprocess
import sys
import tempfile
from typing import Any, Dict, List

REPO = pathlib.Path(__file__).resolve().parent.parent
ENGINES = ("cache_dit", "ours")

EXAMPLES: Dict[str, List[List[str]]] = {
    "run_transformer_only.py": [["--cache", "--Fn", "1"]],
    "run_cache_refresh_flux.py": [
        ["--cache", "--Fn", "1", "--summary"],
        ["--cache", "--Fn", "1", "--summary", "--refresh-use-cache-config"],
    ],
    "run_steps_mask.py": [  # the commands listed at the end of the example
        ["--cache", "--Fn", "1", "--step-mask", "s", "--step-policy", "static"],
        ["--cache", "--Fn", "1", "--step-mask", "s", "--step-policy", "dynamic"],
        ["--cache", "--Fn", "1", "--step-mask", "m", "--step-policy", "dynamic"],
        ["--cache", "--Fn", "1", "--step-mask", "f", "--step-policy", "dynamic"],
        ["--cache", "--Fn", "1", "--step-mask", "f", "--step-policy", "dynamic", "--taylorseer"],
        ["--cache", "--Fn", "1", "--step-mask", "u", "--step-policy", "dynamic"],
        ["--cache", "--Fn", "1", "--step-mask", "u", "--step-policy", "dynamic", "--taylorseer"],
    ],
    "run_cache_refresh_wan_2.2.py": [["--cache", "--Fn", "1", "--summary"]],
}
IMAGE_ARGS = ["--height", "16", "--width", "16"]
# One thread per child process. With torch's default pool on shared cores the threads spin
# against the other processes: test_forward_pattern.py took 24 min that way, 18 s on one thread.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

UTILS_STAND_IN = '''
"""Stand-in for cache-dit's deleted examples/utils.py (flags and defaults of cache_dit._utils)."""
import argparse
import cache_dit


class MemoryTracker:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def report(self):
        return 0


def GiB():
    return 0


def get_args(parse=True):
    parser = argparse.ArgumentParser()
    add = parser.add_argument
    add("--model-path", type=str, default=None)
    add("--cache", action="store_true", default=False)
    add("--Fn", type=int, default=1)
    add("--Bn", type=int, default=0)
    add("--rdt", type=float, default=0.08)
    add("--max-warmup-steps", type=int, default=8)
    add("--warmup-interval", type=int, default=1)
    add("--max-cached-steps", type=int, default=-1)
    add("--max-continuous-cached-steps", type=int, default=-1)
    add("--taylorseer", action="store_true", default=False)
    add("--taylorseer-order", type=int, default=1)
    add("--steps", type=int, default=None)
    add("--height", type=int, default=None)
    add("--width", type=int, default=None)
    add("--prompt", type=str, default=None)
    add("--negative-prompt", type=str, default=None)
    add("--compile", action="store_true", default=False)
    add("--quantize", action="store_true", default=False)
    add("--quantize-type", type=str, default="float8_weight_only")
    add("--attn", type=str, default=None)
    add("--track-memory", action="store_true", default=False)
    return parser.parse_args() if parse else parser


def strify(args, pipe_or_stats):
    return f"C{int(args.compile)}_{cache_dit.strify(pipe_or_stats)}"
'''

PYTEST_PLUGIN = '''
"""Seeds every test and records what each test's summary() calls return."""
import json, os
import pytest
import torch

_RECORDS = {}


def pytest_configure(config):
    torch.set_num_threads(1)
    if os.environ["SUITE_ENGINE"] == "ours":
        import dit_cache_backend.cache_dit_paths as paths
        paths.install()
    import cache_dit
    original = cache_dit.summary

    def recording(*args, **kwargs):
        entries = original(*args, **kwargs)
        _RECORDS.setdefault(os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0], []).append(
            [list(map(int, e.cached_steps)) for e in entries])
        return entries

    cache_dit.summary = recording


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        _RECORDS.setdefault("__outcomes__", {})[report.nodeid] = report.outcome


def pytest_unconfigure(config):
    with open(os.environ["SUITE_RECORD"], "w") as f:
        json.dump(_RECORDS, f)
'''


# -- worker: runs inside the fresh interpreter --------------------------------------------------


def _install_stand_ins(record: Dict[str, Any], out_dir: pathlib.Path) -> None:
    import diffusers
    import numpy as np
    import PIL.Image
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    import tiny_models  # noqa: E402  (ours: the tiny random Wan 2.2)

    from dit_cache_backend import tiny_model

    def tiny_flux(*_args: Any, **_kwargs: Any) -> Any:
        pipe = tiny_model.tiny_flux_pipeline()
        embeds, pooled = tiny_model.tiny_flux_class_embeddings()

        def encode_prompt(prompt: Any, *args: Any, num_images_per_prompt: int = 1, **kw: Any):
            text = prompt if isinstance(prompt, str) else prompt[0]
            k = int(hashlib.sha256(text.encode()).hexdigest(), 16) % embeds.shape[0]
            return embeds[k : k + 1], pooled[k : k + 1], torch.zeros(embeds.shape[1], 3)

        pipe.encode_prompt = encode_prompt
        return pipe

    def tiny_wan(*_args: Any, **_kwargs: Any) -> Any:
        pipe = tiny_models.tiny_wan_pipeline(two_experts=True)
        generator = torch.Generator().manual_seed(1)
        cond, uncond = torch.randn(1, 16, 32, generator=generator), torch.randn(1, 16, 32, generator=generator)
        pipe.encode_prompt = lambda *a, **k: (cond, uncond)
        original_call = type(pipe).__call__

        def small_call(self: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs.update(height=16, width=16, num_frames=9)
            return original_call(self, *args, **kwargs)

        type(pipe).__call__ = small_call
        return pipe

    diffusers.FluxPipeline.from_pretrained = staticmethod(tiny_flux)
    diffusers.WanPipeline.from_pretrained = staticmethod(tiny_wan)
    diffusers.DiffusionPipeline.enable_model_cpu_offload = lambda self, *a, **k: None

    def keep(kind: str, array: Any, path: str) -> None:
        array = np.asarray(array)
        index = len(record["saves"])
        np.save(out_dir / f"{index}.npy", array)
        record["saves"].append({"kind": kind, "name": os.path.basename(str(path)), "npy": f"{index}.npy"})

    PIL.Image.Image.save = lambda self, path, *a, **k: keep("image", self, path)
    diffusers.utils.export_to_video = lambda frames, path=None, *a, **k: keep(
        "video", np.stack([np.asarray(f) for f in frames]), path
    )


def worker(engine: str, example: str, argv: List[str], out_dir: str) -> None:
    record: Dict[str, Any] = {"saves": [], "summaries": []}
    out = pathlib.Path(out_dir)
    if engine == "ours":
        import dit_cache_backend.cache_dit_paths as paths

        paths.install()
    import cache_dit
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    _install_stand_ins(record, out)
    original_summary = cache_dit.summary

    def recording(*args: Any, **kwargs: Any) -> Any:
        entries = original_summary(*args, **kwargs)
        record["summaries"].append([list(map(int, e.cached_steps)) for e in entries])
        return entries

    cache_dit.summary = recording
    sys.path.insert(0, str(out))  # the utils stand-in
    os.chdir(pathlib.Path(example).parent)
    sys.argv = [example, *argv]
    try:
        runpy.run_path(example, run_name="__main__")
        record["outcome"] = "passed"
    except BaseException as error:  # noqa: BLE001  (report what stopped the example)
        record["outcome"] = f"failed: {type(error).__name__}: {str(error)[:300]}"
    (out / "record.json").write_text(json.dumps(record))


# -- driver -------------------------------------------------------------------------------------


def _run(cmd: List[str], env: Dict[str, str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=1800)


def run_tests(
    checkout: pathlib.Path, work: pathlib.Path, names: List[str]
) -> List[Dict[str, Any]]:
    (work / "suite_plugin.py").write_text(PYTEST_PLUGIN)
    rows = []
    files = sorted((checkout / "tests" / "api").glob("test_*.py"))
    for test_file in [f for f in files if not names or f.name in names]:
        per_engine = {}
        for engine in ENGINES:
            record_path = work / f"{test_file.stem}.{engine}.json"
            env = dict(os.environ, **ONE_THREAD, SUITE_ENGINE=engine, SUITE_RECORD=str(record_path),
                       PYTHONPATH=str(work), CACHE_DIT_LOG_LEVEL="WARNING")
            done = _run([sys.executable, "-m", "pytest", "-q", "-p", "suite_plugin", "-p", "no:cacheprovider",
                         str(test_file.relative_to(checkout / "tests"))], env, checkout / "tests")
            records = json.loads(record_path.read_text()) if record_path.exists() else {}
            outcomes = records.pop("__outcomes__", {})
            last = done.stdout.strip().splitlines()[-1:] or done.stderr.strip().splitlines()[-1:]
            per_engine[engine] = {"outcomes": outcomes, "summaries": records, "tail": last[0] if last else ""}
        rows.append({"file": f"tests/api/{test_file.name}", **_compare_tests(per_engine)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _compare_tests(per_engine: Dict[str, Any]) -> Dict[str, Any]:
    ref, ours = per_engine["cache_dit"], per_engine["ours"]
    return {
        "cache_dit": ref["tail"],
        "ours": ours["tail"],
        "same_outcomes": ref["outcomes"] == ours["outcomes"],
        "outcome_differences": {
            k: (ref["outcomes"].get(k), ours["outcomes"].get(k))
            for k in sorted(set(ref["outcomes"]) | set(ours["outcomes"]))
            if ref["outcomes"].get(k) != ours["outcomes"].get(k)
        },
        "summaries_compared": len(ref["summaries"]),
        "same_cached_steps": ref["summaries"] == ours["summaries"],
    }


def run_examples(
    checkout: pathlib.Path, work: pathlib.Path, names: List[str]
) -> List[Dict[str, Any]]:
    import numpy as np

    rows = []
    for name in names:
        variants = EXAMPLES[name]
        example = checkout / "examples" / "api" / name
        for argv in variants:
            argv = [*argv, *IMAGE_ARGS]
            records = {}
            for engine in ENGINES:
                out = pathlib.Path(tempfile.mkdtemp(dir=work))
                (out / "utils.py").write_text(UTILS_STAND_IN)
                env = dict(os.environ, **ONE_THREAD, CACHE_DIT_LOG_LEVEL="WARNING")
                _run([sys.executable, __file__, "--worker", engine, str(example), out.as_posix(), *argv],
                     env, REPO)
                path = out / "record.json"
                records[engine] = (json.loads(path.read_text()) if path.exists()
                                   else {"outcome": "failed: no record", "saves": [], "summaries": []}, out)
            (ref, ref_dir), (ours, ours_dir) = records["cache_dit"], records["ours"]
            # Pixels only: the file names (strify tags) are compared apart, in same_tags.
            identical = [
                np.array_equal(np.load(ref_dir / a["npy"]), np.load(ours_dir / b["npy"]))
                for a, b in zip(ref["saves"], ours["saves"])
            ]
            rows.append({
                "example": f"examples/api/{name} {' '.join(argv)}",
                "cache_dit": ref["outcome"],
                "ours": ours["outcome"],
                "same_tags": [s["name"] for s in ref["saves"]] == [s["name"] for s in ours["saves"]],
                "tags": {"cache_dit": [s["name"] for s in ref["saves"]], "ours": [s["name"] for s in ours["saves"]]},
                "same_cached_steps": ref["summaries"] == ours["summaries"],
                "summaries": {"cache_dit": ref["summaries"], "ours": ours["summaries"]},
                "outputs_bit_identical": f"{sum(identical)}/{max(len(ref['saves']), len(ours['saves']))}",
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        engine, example, out_dir, *argv = sys.argv[2:]
        worker(engine, example, argv, out_dir)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=pathlib.Path, help="a local clone of vipshop/cache-dit")
    parser.add_argument("--only", choices=("tests", "examples"))
    parser.add_argument("--test", action="append", default=[],
                        help="run only this tests/api file, e.g. test_refresh_context.py (repeatable)")
    parser.add_argument("--example", action="append", choices=sorted(EXAMPLES),
                        help="run only this example (repeatable); default: all")
    parser.add_argument("--json", type=pathlib.Path, help="write the rows here too")
    args = parser.parse_args()
    checkout = args.checkout
    if checkout is None or not (checkout / "tests" / "api").is_dir() or not (checkout / "examples" / "api").is_dir():
        print(
            "cache_dit_upstream_suite: no cache-dit checkout given (--checkout PATH, a clone of "
            "github.com/vipshop/cache-dit with tests/api and examples/api); nothing to run.",
            file=sys.stderr,
        )
        return 2
    work = pathlib.Path(tempfile.mkdtemp(prefix="cache_dit_suite_"))
    rows: Dict[str, Any] = {}
    if args.only in (None, "tests"):
        rows["tests"] = run_tests(checkout.resolve(), work, args.test)
    if args.only in (None, "examples"):
        rows["examples"] = run_examples(checkout.resolve(), work, args.example or list(EXAMPLES))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
