"""``dit-cache bench`` on the command line: the arguments, the dry run, and the run's outputs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .report import markdown_table, write_outputs
from .runner import DEFAULT_PEERS, PEER_NAMES, check_peers, run_benchmark
from .specs import BUILTIN_HELP, DEFAULT_CONFIGS, cache_options, config_tag, resolve_config
from .workloads import FLUX_DEV_CONFIG, FLUX_DEV_TOKENS, MEDIUM_CONFIG, MEDIUM_TOKENS, TRAINED
from .workloads import check_model, device_and_dtype

DESCRIPTION = (
    "dit-cache bench: speed, memory and fidelity of cache configs against the uncached baseline "
    "and the peers (cache-dit, diffusers' caches, fewer steps), each peer tuned to the configs' "
    "computed steps."
)


def dry_run(args: argparse.Namespace) -> int:
    """Check arguments and configs and print the plan; builds no model (works without a GPU)."""
    check_model(args.model)
    device, dtype = device_and_dtype(args)
    peers = check_peers(args)
    model = args.model
    sizes = {
        "medium": (MEDIUM_CONFIG, MEDIUM_TOKENS),
        "flux-dev": (FLUX_DEV_CONFIG, FLUX_DEV_TOKENS),
    }
    print(
        f"bench plan: model {model} on {device} ({str(dtype).replace('torch.', '')}), "
        f"{args.steps} steps, {args.warmup} warm-up + {args.repeats} timed rounds, "
        f"threads {args.threads}"
    )
    if model in sizes:
        config, tokens = sizes[model]
        print(
            f"  transformer: {config['num_layers']} double + {config['num_single_layers']} single "
            f"blocks, hidden {config['num_attention_heads'] * config['attention_head_dim']} "
            f"({config['num_attention_heads']} x {config['attention_head_dim']}), "
            f"{tokens[0]} image + {tokens[1]} text tokens, batch {args.batch}"
        )
    import dit_cache_backend as dcb

    for spec in args.config:
        options = cache_options(dcb, resolve_config(spec, args.steps))
        print(f"  config {spec}: {config_tag(options, '(no cache config)')}")
    print(f"  peers: {', '.join(peers) if peers else 'none'}")
    return 0


def add_bench_parser(sub: Any) -> None:
    """Register ``dit-cache bench`` on the CLI's subparsers."""
    bench = sub.add_parser(
        "bench",
        help="speed, memory and fidelity of cache configs vs uncached and peers",
        description=DESCRIPTION + " " + BUILTIN_HELP,
    )
    bench.add_argument(
        "--model",
        default="tiny",
        help="tiny (default, the trained tiny Flux), qwen-image (trained tiny Qwen-Image), "
        "medium (CPU speed), flux-dev (CUDA) or a local diffusers pipeline directory",
    )
    bench.add_argument("--config", nargs="+", default=DEFAULT_CONFIGS, help=BUILTIN_HELP)
    bench.add_argument("--steps", type=int, default=28)
    bench.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    bench.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    bench.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (0: leave)")
    bench.add_argument("--device", default=None, help="cpu (default) or cuda (flux-dev default)")
    bench.add_argument(
        "--dtype", default=None, help="float32 (default) / bfloat16 (flux-dev default) / float16"
    )
    bench.add_argument(
        "--batch",
        type=int,
        default=None,
        help="samples per call (trained tiny models: their 8 classes; others: 1)",
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument(
        "--peers", nargs="+", default=DEFAULT_PEERS, help=f"subset of {', '.join(PEER_NAMES)}"
    )
    bench.add_argument("--no-peers", action="store_true", help="only uncached and ours")
    bench.add_argument("--prompt", default="a photo of a cat", help="local pipelines only")
    bench.add_argument("--height", type=int, default=None, help="local pipelines only")
    bench.add_argument("--width", type=int, default=None, help="local pipelines only")
    bench.add_argument("--out-dir", default="bench_out")
    bench.add_argument(
        "--dry-run",
        action="store_true",
        help="check the arguments and print the plan without building a model",
    )
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(handler=bench_main)


def bench_main(args: argparse.Namespace) -> int:
    if args.batch is None:
        from ..tiny_zoo import NUM_CLASSES  # a trained tiny model samples all its classes at once

        args.batch = NUM_CLASSES if args.model in TRAINED else 1
    if args.repeats < 1 or args.warmup < 0 or args.steps < 1 or args.batch < 1:
        raise ValueError("--repeats, --steps and --batch must be >= 1 and --warmup >= 0")
    if args.dry_run:
        return dry_run(args)
    result = run_benchmark(args)
    paths = write_outputs(result, Path(args.out_dir))
    print(markdown_table(result))
    for note in result["skipped"]:
        print(f"skipped {note['peer']}: {note['reason']}")
    print(f"json: {paths['json']}\nmarkdown: {paths['markdown']}\nplot: {paths['plot']}")
    return 0
