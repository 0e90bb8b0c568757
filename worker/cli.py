"""`moderation-worker`: run the worker, or print what it would serve (`info`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import sys
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
    "--http-api-port": ("http_api_port", int),
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

    from worker.hardware import SPEED_FLAGS
    from worker.model import DEFAULT_MODEL_DIR, load_from_settings

    if model is not None:
        settings = settings.model_copy(update={"model": model})
    served = load_from_settings(settings)
    contract, backend = served.contract, served.backend
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "aiokafka": aiokafka.__version__,
        "cuda_available": torch.cuda.is_available(),
        "backend": backend.kind,
        "device": backend.device,
        "precision": backend.precision,
        "chosen": served.runtime.describe(),
        "cpu_flags": sorted(served.runtime.cpu.flags & SPEED_FLAGS),
        "default_model_dir": str(DEFAULT_MODEL_DIR),
        "model": {"name": contract.model_name, "version": contract.model_version},
        "labels": list(contract.labels),
        "thresholds": dict(contract.label_thresholds),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # moved out of the product (issue 11)
        print(
            "moderation-worker: the benchmarks moved to `python -m bench` (`make bench`) in a "
            "checkout of the repository",
            file=sys.stderr,
        )
        return 2
    args = build_parser().parse_args(argv)
    try:
        overrides = {field: getattr(args, field, None) for field, _ in RUN_FLAGS.values()}
        settings = load_settings(**(overrides if args.command == "run" else {}))
    except SettingsError as exc:
        print(f"moderation-worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    from worker.backend import ModelLoadError

    try:
        if args.command == "info":
            info = describe(settings, args.model)
            if args.json:
                sys.stdout.write(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode() + "\n")
            else:
                for key, value in info.items():
                    print(f"{key}: {value}")
            return 0
        log.info("starting with %s", settings.redacted())
        from worker.app import StartupClock, load_and_warm_up, serve

        clock = StartupClock()
        model = load_and_warm_up(settings, clock)
        return asyncio.run(serve(settings, model, clock))
    except ModelLoadError as exc:
        print(f"moderation-worker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
