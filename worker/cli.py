"""`moderation-worker`: run the worker, or print what it would serve (`info`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import sys
from pathlib import Path
from typing import Any, NoReturn

import orjson

from worker.config import Settings, SettingsError, load_settings

log = logging.getLogger("worker")

# CLI flag -> settings field; every flag also has an environment variable (see worker.config).
RUN_FLAGS: dict[str, tuple[str, type]] = {
    "--bootstrap-servers": ("bootstrap_servers", str),
    "--input-topic": ("input_topic", str),
    "--output-topic": ("output_topic", str),
    "--dlq-topic": ("dlq_topic", str),
    "--group-id": ("group_id", str),
    "--model": ("model", str),
    "--device": ("device", str),
    "--max-batch-size": ("max_batch_size", int),
    "--max-wait-ms": ("max_wait_ms", float),
    "--metrics-port": ("metrics_port", int),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """Argument errors as one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="moderation-worker",
        description="Score Kafka comments with a multi-label toxicity model.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    run = commands.add_parser(
        "run",
        help="consume, score and publish until SIGTERM",
        description="Flags override the environment (KAFKA_BOOTSTRAP_SERVERS, MODERATION_*).",
    )
    for flag, (field, kind) in RUN_FLAGS.items():
        env = (
            "KAFKA_BOOTSTRAP_SERVERS"
            if field == "bootstrap_servers"
            else f"MODERATION_{field.upper()}"
        )
        run.add_argument(flag, dest=field, type=kind, default=None, help=f"env {env}")
    bench = commands.add_parser(
        "bench",
        help="benchmark: model-only ceiling, worker end to end, naive consumer",
        description="Worker settings come from the environment (MODERATION_*) and these flags.",
    )
    bench.add_argument("--messages", type=int, default=None, help="corpus size (default 50000)")
    bench.add_argument("--corpus", type=Path, default=None, help="CSV[.gz] with comment_text")
    bench.add_argument("--output-dir", type=Path, default=Path("bench-results"))
    bench.add_argument("--quick", action="store_true", help="small smoke run")
    bench.add_argument("--no-profile", action="store_true", help="skip py-spy")
    bench.add_argument("--no-precision-check", action="store_true", help="skip bf16/int8 check")
    for flag in ("--model", "--device", "--max-batch-size", "--max-wait-ms"):
        field, kind = RUN_FLAGS[flag]
        bench.add_argument(flag, dest=field, type=kind, default=None)
    info = commands.add_parser("info", help="versions, default model, labels and device")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--model", default=None, help="model to describe (default: bundled)")
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiokafka").setLevel(max(logging.getLevelName(level), logging.WARNING))


def describe(settings: Settings, model: str | None) -> dict[str, Any]:
    """What `info` prints: versions, the model and its labels, the device that would be used."""
    import aiokafka
    import torch
    import transformers

    from worker.infer import DEFAULT_MODEL_DIR, Scorer, default_model_has_weights

    scorer = Scorer.load(model or settings.model, device=settings.device)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "aiokafka": aiokafka.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": str(scorer.device),
        "default_model_dir": str(DEFAULT_MODEL_DIR),
        "default_model_trained": default_model_has_weights(),
        "model": {"name": scorer.name, "version": scorer.version},
        "labels": scorer.labels,
        "thresholds": scorer.thresholds,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = {field: getattr(args, field, None) for field, _ in RUN_FLAGS.values()}
        settings = load_settings(**(overrides if args.command in ("run", "bench") else {}))
    except SettingsError as exc:
        print(f"moderation-worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    from worker.infer import ModelLoadError

    try:
        if args.command == "info":
            info = describe(settings, args.model)
            if args.json:
                sys.stdout.write(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode() + "\n")
            else:
                for key, value in info.items():
                    print(f"{key}: {value}")
            return 0
        if args.command == "bench":
            return _bench(settings, args)
        return asyncio.run(_run(settings))
    except ModelLoadError as exc:
        print(f"moderation-worker: {exc}", file=sys.stderr)
        return 2


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    from worker.bench.corpus import CorpusError
    from worker.bench.runner import BenchOptions, run_bench

    given: dict[str, Any] = {"output_dir": args.output_dir}
    if args.messages is not None:
        given["messages"] = args.messages
    if args.corpus is not None:
        given["corpus"] = args.corpus
    if args.no_profile:
        given["profile"] = False
    if args.no_precision_check:
        given["precision_check"] = False
    options = BenchOptions.quick(**given) if args.quick else BenchOptions(**given)
    logging.getLogger("worker.bench").setLevel(logging.INFO)
    try:
        run_bench(settings, options)
    except CorpusError as exc:
        print(f"moderation-worker: {exc}", file=sys.stderr)
        return 2
    print((options.output_dir / "REPORT.md").read_text())
    return 0


async def _run(settings: Settings) -> int:
    from worker.app import Worker, install_signal_handlers

    log.info("starting with %s", settings.redacted())
    worker = Worker(settings)
    install_signal_handlers(worker)
    return await worker.run()


if __name__ == "__main__":
    sys.exit(main())
