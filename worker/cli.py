"""`moderation-worker`: run the worker, print what it would serve (`info`), or work on the
dead-letter topic (`dlq inspect|redrive`, worker/ops/dlq_cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import sys
from importlib import metadata
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from worker.config import (
    Settings,
    SettingsError,
    default_text,
    deprecated_variables,
    env_names,
    load_settings,
    unknown_variables,
)
from worker.tracing import Tracing, TracingError

if TYPE_CHECKING:
    from worker.backends.runtime import Runtime

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
    "--policy-file": ("policy_file", str),
    "--shadow-model": ("shadow_model", str),
    "--http-api-port": ("http_api_port", int),
    "--http-only": ("http_only", bool),  # a switch: no value
}


# What a switch does (a flag with a value says it by its name and default)
FLAG_HELP = {
    "http_only": "serve only the Perspective-compatible HTTP API, without Kafka (needs "
    "--http-api-port or MODERATION_HTTP_API_PORT)",
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
        help="consume, score and publish until SIGTERM (or, --http-only, serve the HTTP API)",
        description="Flags override the environment (KAFKA_BOOTSTRAP_SERVERS, MODERATION_*).",
        epilog=other_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    variables = {field: name for name, field in reversed(env_names().items())}
    for flag, (field, kind) in RUN_FLAGS.items():
        env_help = f"env {variables[field]} (default: {default_text(field)})"
        if kind is bool:
            run.add_argument(
                flag, dest=field, action="store_const", const=True, default=None,
                help=f"{FLAG_HELP[field]}; {env_help}",
            )  # fmt: skip
            continue
        run.add_argument(flag, dest=field, type=kind, default=None, help=env_help)
    info = commands.add_parser("info", help="versions, default model, labels and device")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--model", default=None, help="model to describe (default: bundled)")
    info.add_argument(
        "--load",
        action="store_true",
        help="also load the weights on the chosen backend and score one text, as `run` would "
        "(slower: imports the backend's libraries)",
    )
    from worker.ops import dev_broker, dlq_cli

    dlq_cli.add_parser(commands)
    dev_broker.add_parser(commands)
    return parser


def other_settings_epilog() -> str:
    """The settings that have no flag, with their defaults (from the settings model)."""
    flagged = {field for field, _ in RUN_FLAGS.values()}
    lines = [
        f"  {name}={default_text(field)}"
        for name, field in env_names().items()
        if field not in flagged and name.startswith("MODERATION_")
        and name != "MODERATION_BOOTSTRAP_SERVERS"
    ]  # fmt: skip
    return "\n".join(
        [
            "settings without a flag (environment only), with their defaults:",
            *lines,
            "what each one means: docs/CONTRACTS.md (section Configuration)",
        ]
    )


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiokafka").setLevel(max(logging.getLevelName(level), logging.WARNING))


def package_version(name: str) -> str | None:
    """An installed distribution's version, read without importing it (torch and transformers
    take seconds to import); None if it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cuda_available() -> bool:
    """Whether torch sees a GPU; without any trace of a GPU driver it cannot, and torch is not
    imported to ask."""
    from worker.backends.runtime import gpu_may_be_present, torch_installed

    if not gpu_may_be_present() or not torch_installed():
        return False
    import torch

    return bool(torch.cuda.is_available())


def describe(settings: Settings, model: str | None, load: bool = False) -> dict[str, Any]:
    """What `info` prints: versions, the model and its labels, what would serve it and why.
    The artifact is checked (as at start-up) but its weights are loaded only with `load`, so
    neither torch nor transformers is imported otherwise (unless the device is a GPU)."""
    from worker.backends.hardware import SPEED_FLAGS
    from worker.backends.model import DEFAULT_MODEL_DIR, load_from_settings, plan_from_settings
    from worker.backends.runtime import torch_installed

    if model is not None:
        settings = settings.model_copy(update={"model": model})
    plan = plan_from_settings(settings)
    contract, runtime = plan.contract, plan.runtime
    loaded: dict[str, Any] = {}
    if load:
        served = load_from_settings(settings)
        runtime = served.runtime  # a pending backend `auto` was measured by the load
        scores = served.score(["a smoke test of the loaded model"])
        loaded = {"loaded": {"device": served.backend.device, "scores": scores[0].tolist()}}
    return {
        "python": platform.python_version(),
        "torch": package_version("torch") if torch_installed() else None,  # None: not installed
        "transformers": package_version("transformers"),
        "onnxruntime": package_version("onnxruntime"),
        "openvino": package_version("openvino"),
        "aiokafka": package_version("aiokafka"),
        "cuda_available": cuda_available(),
        "backend": runtime.backend.value,
        "device": runtime.device.value,
        "precision": runtime.precision.value,
        "chosen": runtime.describe(),
        # backend auto on a CPU: the measurement remembered here, or not measured yet
        "backend_measurement": measurement(runtime),
        "cpu_flags": sorted(runtime.cpu.flags & SPEED_FLAGS),
        "default_model_dir": str(DEFAULT_MODEL_DIR),
        "model": {"name": contract.model_name, "version": contract.model_version},
        "labels": list(contract.labels),
        "thresholds": dict(contract.label_thresholds),
        # the label rates the probabilities are calibrated for (None: uncalibrated)
        "label_base_rates": contract.label_base_rates,
        # a model written although it looks collapsed: what was measured and what to do
        "collapsed": contract.collapse_warning(),
    } | loaded


def measurement(runtime: Runtime) -> dict[str, Any] | str | None:
    """The figures behind a measured `auto` backend; "not measured yet" while it is pending;
    None where nothing is measured (an explicit backend, a GPU, a single candidate)."""
    if runtime.measured is not None:
        return {
            "backend": runtime.measured.backend,
            "precision": runtime.measured.precision,
            "padded_tokens_per_s": runtime.measured.tokens_per_s,
            "per": "CPU-second" if runtime.measured.basis == "cpu" else "second",
            "measured_at": runtime.measured.measured_at,
        }
    if runtime.pending:
        return "not measured yet: " + ", ".join(c.name for c in runtime.candidates)
    return None


def tracing_from_settings(settings: Settings) -> Tracing | None:
    """None unless `MODERATION_OTEL` is on; then OpenTelemetry configured by the standard
    `OTEL_*` variables. Raises `TracingError` if the packages or the exporter are missing."""
    if not settings.otel:
        return None
    try:
        from worker.otel import OtelTracing
    except ImportError as exc:
        raise TracingError(
            f"MODERATION_OTEL is on but OpenTelemetry is not installed ({exc.name}): "
            "pip install 'moderation-worker[otel]'"
        ) from None
    return OtelTracing.from_environment()


def run_worker(settings: Settings) -> int:
    """`run`: the composition root. Everything the worker serves is loaded (or refused) here,
    cheapest check first, before anything connects; `Worker` only wires and runs it.
    Raises ModelLoadError, PolicyError or TracingError (one line each)."""
    from worker.backends.model import plan_from_settings

    plan_from_settings(settings)  # path, artifact and device: refused in well under 1 s
    from worker.app import StartupClock, load_and_warm_up, serve

    clock = StartupClock()
    tracing = tracing_from_settings(settings)  # before the model: refuse at once
    model = load_and_warm_up(settings, clock)
    policy = None
    if settings.policy_file is not None:
        from worker.policy import load_policy_file

        policy = load_policy_file(
            settings.policy_file, model.contract.labels, settings.policy_max_bytes
        )
        log.info("threshold policy %s from %s", policy.version, settings.policy_file)
    shadow = None
    if settings.shadow_model is not None:
        from worker.shadow import load_shadow

        shadow = load_shadow(settings, model)
    return asyncio.run(serve(settings, model, clock, shadow=shadow, policy=policy, tracing=tracing))


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
        settings = load_settings(**(overrides if args.command in ("run", "dlq") else {}))
    except SettingsError as exc:
        print(f"moderation-worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    for warning in unknown_variables() + deprecated_variables():
        log.warning("%s", warning)
    if args.command == "dlq":
        from worker.ops import dlq_cli

        return dlq_cli.run(args, settings)
    if args.command == "dev-broker":
        from worker.ops import dev_broker

        return dev_broker.run(args, settings)
    from worker.backends.backend import ModelLoadError
    from worker.policy import PolicyError

    try:
        if args.command == "info":
            info = describe(settings, args.model, load=args.load)
            if args.json:
                sys.stdout.write(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode() + "\n")
            else:
                for key, value in info.items():
                    print(f"{key}: {value}")
            return 0
        log.info("starting with %s", settings.redacted())
        return run_worker(settings)
    except (ModelLoadError, PolicyError, TracingError) as exc:
        print(f"moderation-worker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
