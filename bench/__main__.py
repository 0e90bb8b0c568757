"""`python -m bench`: the benchmark's command line (what `make bench` runs).

Worker settings come from the environment (MODERATION_*, KAFKA_BOOTSTRAP_SERVERS) as for
`moderation-worker run`, with a few flags on top; prints REPORT.md at the end.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from worker.cli import RUN_FLAGS, OneLineErrorParser, configure_logging
from worker.config import SettingsError, load_settings

# the worker settings a flag may override here (as for `moderation-worker run`)
SETTING_FLAGS = {
    flag: RUN_FLAGS[flag] for flag in ("--model", "--device", "--max-batch-size", "--max-wait-ms")
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m bench",
        description="Benchmark: model-only ceiling, worker end to end, naive consumer. Worker "
        "settings come from the environment (MODERATION_*) and these flags.",
    )
    parser.add_argument("--messages", type=int, default=None, help="corpus size (default 50000)")
    parser.add_argument("--corpus", type=Path, default=None, help="CSV[.gz] with comment_text")
    parser.add_argument("--output-dir", type=Path, default=Path("bench-results"))
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--no-profile", action="store_true", help="skip py-spy")
    parser.add_argument("--no-precision-check", action="store_true", help="skip bf16/int8 check")
    parser.add_argument(
        "--no-shadow", action="store_true", help="skip (b) with a shadow model attached"
    )
    parser.add_argument(
        "--shadow-model", default=None, help="the shadow for that run (default: the model)"
    )
    parser.add_argument(
        "--no-language",
        action="store_true",
        help="skip (b) again with language detection flipped (MODERATION_LANGUAGE_DETECTION)",
    )
    parser.add_argument(
        "--no-torch-baseline",
        action="store_true",
        help="skip (a) and (b) once more with the torch backend beside the served one",
    )
    parser.add_argument("--no-http", action="store_true", help="skip (d), the HTTP API load")
    parser.add_argument(
        "--http-requests", type=int, default=None, help="(d) requests per level (default 3000)"
    )
    for flag, (field, kind) in SETTING_FLAGS.items():
        parser.add_argument(
            flag, dest=field, type=kind, default=None, help=f"MODERATION_{field.upper()}"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(
            **{field: getattr(args, field) for field, _ in SETTING_FLAGS.values()}
        )
    except SettingsError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    logging.getLogger("bench").setLevel(logging.INFO)

    from bench.corpus import CorpusError
    from bench.runner import BenchOptions, run_bench
    from worker.backends.backend import ModelLoadError

    given: dict[str, Any] = {"output_dir": args.output_dir}
    if args.messages is not None:
        given["messages"] = args.messages
    if args.corpus is not None:
        given["corpus"] = args.corpus
    if args.no_profile:
        given["profile"] = False
    if args.no_precision_check:
        given["precision_check"] = False
    if args.no_shadow:
        given["shadow"] = False
    if args.no_language:
        given["language"] = False
    if args.no_torch_baseline:
        given["torch_baseline"] = False
    if args.shadow_model is not None:
        given["shadow_model"] = args.shadow_model
    if args.no_http:
        given["http"] = False
    if args.http_requests is not None:
        given["http_requests"] = args.http_requests
    options = BenchOptions.quick(**given) if args.quick else BenchOptions(**given)
    try:
        run_bench(settings, options)
    except (CorpusError, ModelLoadError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print((options.output_dir / "REPORT.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
