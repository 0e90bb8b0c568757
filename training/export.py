"""Write the artifact the worker serves: a `save_pretrained` directory with thresholds and card."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from schemas.artifact import (
    CONFIG_FILE,
    DEFAULT_THRESHOLD,
    WEIGHTS_FILE,
    ArtifactContract,
    Calibration,
    read_contract,
    weights_version,
)
from training.calibration import BaseRates, CalibrationFit
from training.evaluate import format_metric
from training.modeling import HEAD_FILE, MeanPooledClassifier
from training.sources import UsageError

log = logging.getLogger(__name__)

INFO_FILE = "training_info.json"
CARD_FILE = "README.md"
HISTORY_FILE = "history.json"
ARTIFACT_FILE_NAMES = frozenset(
    {
        CONFIG_FILE,
        INFO_FILE,
        CARD_FILE,
        HISTORY_FILE,
        f"{WEIGHTS_FILE}.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
        "chat_template.jinja",
        "generation_config.json",
    }
)


def model_card(info: dict[str, Any], contract: ArtifactContract, config: dict[str, Any]) -> str:
    """Markdown model card from the training info, the artifact contract and the exported
    `config.json` (for the architecture)."""
    metrics: dict[str, Any] = info.get("metrics") or {}
    per_label: dict[str, dict[str, Any]] = metrics.get("labels") or {}
    n_params = info.get("parameters")
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "language: en",
        "tags: [toxicity, multi-label, moderation]",
        "---",
        "",
        f"# {contract.model_name}",
        "",
        f"Multi-label toxicity classifier (`{config.get('model_type')}`, "
        f"{config.get('num_hidden_layers')} layers, hidden {config.get('hidden_size')}, "
        f"{config.get('num_attention_heads')} heads"
        + (f", {n_params:,} parameters" if isinstance(n_params, int) else "")
        + f"), version `{contract.model_version}`.",
        "",
        "## How it was made",
        "",
        f"- method: {info.get('method', 'fit')}",
        f"- base / initialisation: {info.get('base', 'n/a')}",
        f"- training data: {info.get('train_data', 'n/a')} ({info.get('train_rows', 'n/a')} rows)",
        f"- validation data: {info.get('val_data', 'n/a')} ({info.get('val_rows', 'n/a')} rows)",
    ]
    if info.get("skipped_rows"):
        lines.append(f"- bad rows skipped (`--skip-bad-rows`): {info['skipped_rows']}")
    for key, value in (info.get("details") or {}).items():
        lines.append(f"- {key}: {value}")
    if info.get("command"):
        lines.append(f"- command: `{info['command']}`")
    lines += [
        "",
        "## Validation metrics",
        "",
        f"- mean ROC-AUC: {format_metric(metrics.get('mean_roc_auc'))}",
        f"- mean PR-AUC: {format_metric(metrics.get('mean_pr_auc'))}",
        f"- mean BCE: {format_metric(metrics.get('bce'))}",
        f"- mean F1 at the thresholds below: {format_metric(metrics.get('mean_f1'))}",
        "",
        "| label | threshold | ROC-AUC | PR-AUC | F1 |",
        "|---|---|---|---|---|",
    ]
    for label in contract.labels:
        m = per_label.get(label, {})
        lines.append(
            f"| {label} | {contract.label_thresholds[label]:.3f} "
            f"| {format_metric(m.get('roc_auc'))} | {format_metric(m.get('pr_auc'))} "
            f"| {format_metric(m.get('f1'))} |"
        )
    for note in info.get("notes") or []:
        lines += ["", str(note)]
    lines += limitations_section(info, contract)
    lines += _calibration_section(contract, info.get("calibration") or {})
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import pipeline",
        'clf = pipeline("text-classification", model="PATH", top_k=None, '
        'function_to_apply="sigmoid")',
        "```",
        "",
        "Flag a label when its probability is >= `label_thresholds[label]` in `config.json` "
        + _thresholds_origin(contract, info),
        "",
    ]
    return "\n".join(lines)


def _thresholds_origin(contract: ArtifactContract, info: dict[str, Any]) -> str:
    """Where the thresholds come from, and what the probabilities assume (the card's usage)."""
    if contract.calibration is None:
        return (
            "(chosen for max F1 on the validation split). Probabilities are not calibrated to "
            "real traffic base rates."
        )
    reference = (info.get("calibration") or {}).get("reference")
    chosen = (
        f"(those of `{reference['model_name']}` `{reference['model_version']}`, chosen there "
        "for max F1 on its validation split; this model's calibration reproduces its "
        "probabilities)"
        if reference
        else "(chosen for max F1 on the validation split, then mapped through the calibration, "
        "so every flag decision is unchanged)"
    )
    return f"{chosen}. The probabilities are calibrated for traffic at `label_base_rates`."


RARE_LABEL = 0.05  # a label with fewer positives than this share of training rows is "rare"


def limitations_section(info: dict[str, Any], contract: ArtifactContract) -> list[str]:
    """The card's "Limitations": the rare labels of the training rows, and the known misses
    recorded when the model was built (`known_misses` in the training info: text, label,
    score, threshold). Empty when the info records neither."""
    rates: dict[str, float] = info.get("label_positive_rates") or {}
    misses: list[dict[str, Any]] = info.get("known_misses") or []
    if not rates and not misses:
        return []
    lines = ["", "## Limitations", ""]
    rare = {label: rate for label, rate in rates.items() if rate < RARE_LABEL}
    if rates:
        shares = ", ".join(f"{label} {rate:.1%}" for label, rate in rates.items())
        lines.append(f"- Positive rows per label in the training data: {shares}.")
    if rare:
        lines.append(
            "- Rare labels ("
            + ", ".join(rare)
            + ") are learned from few examples: expect misses there, above all phrasings "
            "unlike the training rows (compare their PR-AUC and F1 above)."
        )
    for miss in misses:
        label = str(miss["label"])
        share = f" ({label} is {rates[label]:.1%} of the training rows)" if label in rates else ""
        lines.append(
            f'- Known miss: "{miss["text"]}" is a {label} the model does not flag: '
            f"{label} {float(miss['score']):.3f} against a threshold of "
            f"{float(miss['threshold']):.3f}{share}. {miss.get('why', '')}".rstrip()
        )
    return lines


def _calibration_section(contract: ArtifactContract, fitted: dict[str, Any]) -> list[str]:
    """The card's calibration section: rates, parameters and the cross-fitted ECE (of the
    reference model, for a calibration matched to one: `match_reference`)."""
    calibration = contract.calibration
    if calibration is None:
        return []
    base = contract.label_base_rates or {}
    training = contract.label_training_rates or {}
    table: dict[str, dict[str, Any]] = fitted.get("table") or {}
    ece = (
        "ECE: expected calibration error, 15 equal-mass bins, 5-fold cross-fitted (the map "
        "fitted on 4 folds, measured on the 5th, shifted to the held-out rows' own rate); the "
        "floor is the ECE a perfectly calibrated model would show on as many rows (sampling "
        "noise)."
    )
    folded = (
        "Both are folded into the classifier head's weight and bias, so `sigmoid(logits)` is "
        "the calibrated probability for traffic at the base rates, in every consumer."
    )
    reference = fitted.get("reference")
    if reference:
        agreement = fitted.get("agreement_with_reference") or {}
        intro = [
            "Platt scaling per label (p = sigmoid(a * z + b) on the head's logit z), then a "
            "prior correction from the label rate of this model's training rows (training "
            "rate) to the base rate: the logit moves by logit(base rate) - logit(training "
            f"rate). {folded}",
            "",
            f"This model was trained on all rows, so none were left to fit a and b on: they "
            f"were fitted on {calibration.fitted_on} ({calibration.rows} rows). "
            f"`{reference['model_name']}` `{reference['model_version']}` is the same recipe "
            f"trained on that split only, with its own maps fitted on {reference['fitted_on']} "
            f"({reference['rows']} rows). Its thresholds are that model's too. How closely the "
            "two agree on those texts (mean |difference| of probabilities / share of equal "
            "flags): "
            + ", ".join(
                f"{label} {row['mean_abs_difference']:.4f} / {row['flag_agreement']:.2%}"
                for label, row in agreement.items()
            )
            + f". The ECE columns are that model's, on its held-out rows (this one has none "
            f"to measure them on). {ece}",
        ]
    else:
        intro = [
            f"Platt scaling per label (p = sigmoid(a * z + b) on the head's logit z), fitted on "
            f"{calibration.fitted_on} ({calibration.rows} rows), then a prior correction from "
            "the label rates of those rows (training rate) to the base rate: the logit moves "
            f"by logit(base rate) - logit(training rate). {folded} {ece} Measured on the same "
            "rows."
        ]
    lines = [
        "",
        "## Calibration",
        "",
        *intro,
        "",
        "| label | training rate | base rate | a | b | shift | ECE before | ECE after | floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in contract.labels:
        entry, row = calibration.labels[label], table.get(label, {})
        lines.append(
            f"| {label} | {format_metric(training.get(label), 4)} "
            f"| {format_metric(base.get(label), 4)} "
            + (
                f"| {entry.slope:.3f} | {entry.intercept:+.3f} "
                if entry.fitted
                else "| not fitted | not fitted "
            )
            + f"| {entry.prior_shift:+.3f} | {format_metric(row.get('ece_before'))} "
            f"| {format_metric(row.get('ece_after'))} | {format_metric(row.get('ece_floor'))} |"
        )
    return lines


def save_artifact(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    *,
    thresholds: dict[str, float],
    info: dict[str, Any],
    model_name: str | None = None,
    model_version: str | None = None,
    fp16: bool = False,
    calibration: Calibration | None = None,
    base_rates: dict[str, float] | None = None,
    training_rates: dict[str, float] | None = None,
) -> ArtifactContract:
    """Save weights (safetensors), tokenizer, `config.json` carrying the artifact contract,
    `training_info.json` and the model card; returns the contract written. A `calibration`
    must already be folded into `model`'s head (`training.calibration`).

    The name defaults to the directory's, the version to a hash of the weights written. fp16
    stores half-precision weights (a calibrated head excepted) while `config.dtype` stays
    float32, so stock loaders upcast them (CPU inference in fp16 is slow).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (WEIGHTS_FILE, f"{WEIGHTS_FILE}.index.json"):
        (out_dir / stale).unlink(missing_ok=True)
    config = model.config
    labels = tuple(config.id2label[i] for i in range(config.num_labels))
    info = {**info, "parameters": sum(p.numel() for p in model.parameters())}
    dtype = torch.float16 if fp16 else torch.float32
    # a calibrated head stays float32 (a few KB): fp16 rounding of the folded weights would
    # move the calibrated probabilities by up to ~2e-4
    keep = _head_parameter_names(model) if fp16 and calibration is not None else set()
    state = {
        k: v.detach().to(torch.float32 if k in keep else dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    if isinstance(model, MeanPooledClassifier):  # a teacher: encoder directory + head file
        parts: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "classifier": {}}
        for key, value in state.items():
            part, _, name = key.partition(".")
            if part in parts:
                parts[part][name] = value
        model.encoder.save_pretrained(out_dir, state_dict=parts["encoder"], safe_serialization=True)
        save_file(parts["classifier"], str(out_dir / HEAD_FILE))
    else:
        model.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
    save_tokenizer(tokenizer, out_dir)
    contract = ArtifactContract(
        model_name=model_name or out_dir.resolve().name,
        model_version=model_version or weights_version(out_dir / WEIGHTS_FILE),
        labels=labels,
        label_thresholds={
            label: float(thresholds.get(label, DEFAULT_THRESHOLD)) for label in labels
        },
        calibration=calibration,
        label_base_rates=base_rates,
        label_training_rates=training_rates,
    )
    for key in ("calibration", "label_base_rates", "label_training_rates"):
        if hasattr(config, key):  # a re-export without calibration drops the old entries
            delattr(config, key)
    for key, value in contract.config_entries().items():
        setattr(config, key, value)
    config.dtype = "float32"
    config.save_pretrained(out_dir)
    config_dict = json.loads((out_dir / CONFIG_FILE).read_text())
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    (out_dir / CARD_FILE).write_text(model_card(info, contract, config_dict))
    log.info("exported %s (version %s)", out_dir, contract.model_version)
    return contract


def _head_parameter_names(model: PreTrainedModel) -> set[str]:
    """The state-dict keys of the classifier head's weight and bias."""
    from training.modeling import classifier_head

    head = classifier_head(model)
    prefix = next(name for name, module in model.named_modules() if module is head)
    return {f"{prefix}.weight", f"{prefix}.bias"}


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """`save_pretrained` plus `vocab.txt` (WordPiece) and `special_tokens_map.json`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # don't persist the truncation/padding state of the last call
        backend.no_truncation()
        backend.no_padding()
    tokenizer.save_pretrained(out_dir)
    if backend is not None and type(backend.model).__name__ == "WordPiece":
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        if [i for _, i in vocab] == list(range(len(vocab))):
            (out_dir / "vocab.txt").write_text("".join(f"{tok}\n" for tok, _ in vocab))
    special = {k: str(v) for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def resolve_model_dir(source: Path) -> Path:
    """An artifact directory, or the `model/` directory inside a fit/distill run directory."""
    if (source / CONFIG_FILE).is_file():
        return source
    if (source / "model" / CONFIG_FILE).is_file():
        return source / "model"
    if not source.is_dir():
        raise UsageError(f"{source}: no such directory")
    raise UsageError(f"{source}: neither an artifact nor a run directory (no config.json)")


def _exported_from(model_dir: Path) -> dict[str, str]:
    """What an export records about its source, to recognise its own earlier exports."""
    return {"weights_version": weights_version(model_dir / WEIGHTS_FILE)}


def check_export_target(model_dir: Path, out_dir: Path, *, force: bool) -> None:
    """`UsageError` unless `out_dir` is missing, empty, or an earlier export of the model in
    `model_dir` (or `force`): export never mixes its files with another model's, nor rewrites
    its own source, without being asked to."""
    if force or not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UsageError(f"{out_dir} is a file; give a directory to export into")
    if out_dir.resolve() == model_dir.resolve():
        raise UsageError(
            f"{out_dir} is the source itself; export into a new directory "
            "(or pass --force to rewrite it in place)"
        )
    present = sorted(item.name for item in out_dir.iterdir())
    if not present:
        return
    info_file = out_dir / INFO_FILE
    try:
        earlier = json.loads(info_file.read_text()).get("exported_from") or {}
    except (OSError, ValueError, AttributeError):
        earlier = {}
    if earlier.get("weights_version") == _exported_from(model_dir)["weights_version"]:
        return
    shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
    raise UsageError(
        f"{out_dir} is not empty ({len(present)} entries: {shown}) and is not an earlier export "
        f"of {model_dir}; export into a new or empty directory, or pass --force to replace the "
        "artifact files there"
    )


def remove_artifact_files(out_dir: Path, *, keep: tuple[str, ...] = ()) -> None:
    """Delete the files an export writes (weights, ONNX graphs, config, tokenizer, card, info,
    history) from `out_dir`, so that none of an earlier model's is left beside the new one;
    other files are left alone."""
    if not out_dir.is_dir():
        return
    for item in out_dir.iterdir():
        if item.name in keep or not item.is_file():
            continue
        if item.name in ARTIFACT_FILE_NAMES or item.suffix in (".safetensors", ".onnx"):
            item.unlink()


def export_model(
    source: Path,
    out_dir: Path,
    *,
    fp16: bool = False,
    metrics_path: Path | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    onnx: bool = False,
    onnx_check: Path | None = None,
    force: bool = False,
    calibration_data: Path | None = None,
    base_rates: BaseRates = None,
    calibration_from: Path | None = None,
) -> ArtifactContract:
    """Re-export a trained model (from a run or artifact directory) as a served artifact.

    Thresholds and training info carry over; the name carries over only when exporting in
    place (elsewhere it defaults to the new directory's name); the version is recomputed from
    the weights written unless given. With `calibration_data` (a labeled file), a per-label
    calibration is fitted on its validation split and folded into the head, with the prior
    correction to `base_rates` (default: the full Jigsaw rates; `"training"`: none); without
    it, `base_rates` re-shifts an already calibrated source, and a source's calibration
    carries over. Thresholds are mapped through the same increasing map (every flag decision
    stays). With `calibration_from` (a calibrated artifact; needs `calibration_data`), a model
    trained on all rows, which has no held-out rows to fit on, is calibrated to reproduce that
    artifact's probabilities on the texts of `calibration_data`'s training split, and takes
    over its thresholds and base rates (`match_reference`). With `onnx`, the ONNX graphs are
    written beside the weights (`training.onnx_export.export_onnx_graphs`; int8 only if it
    passes the accuracy rule on the validation split of the labeled file `onnx_check`).

    `out_dir` must be missing, empty or an earlier export of the same model; `force` allows
    any directory, the source included (`check_export_target`). The artifact files of an
    earlier model there are removed first, so that none is left beside the new ones.
    """
    from training.modeling import load_classifier, load_tokenizer

    model_dir = resolve_model_dir(source)
    check_export_target(model_dir, out_dir, force=force)
    model = load_classifier(model_dir)
    tokenizer = load_tokenizer(model_dir)
    source_contract = read_contract(model_dir)
    info_file = model_dir / INFO_FILE
    info: dict[str, Any] = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if metrics_path is not None:
        info["metrics"] = json.loads(metrics_path.read_text())
    info["exported_from"] = _exported_from(model_dir)
    thresholds = dict(source_contract.label_thresholds)
    calibration = source_contract.calibration
    rates = (source_contract.label_base_rates, source_contract.label_training_rates)
    if calibration_from is not None:
        if calibration_data is None:
            raise UsageError("--calibration-from needs --calibration-data (the texts to match on)")
        if base_rates is not None:
            raise UsageError(
                "--calibration-from takes the reference's base rates: drop --base-rates"
            )
        fit, thresholds = match_reference(
            model, tokenizer, source_contract, calibration_data, calibration_from, info
        )
        calibration, rates = fit.calibration, (fit.base_rates, fit.training_rates)
    elif calibration_data is not None or base_rates is not None:
        fit = calibrate(model, tokenizer, source_contract, calibration_data, base_rates, info)
        thresholds = fit.map_thresholds(thresholds)
        calibration, rates = fit.calibration, (fit.base_rates, fit.training_rates)
    if calibration is not source_contract.calibration:
        for label, entry in (info.get("metrics") or {}).get("labels", {}).items():
            entry["threshold"] = thresholds.get(label, entry.get("threshold"))
    in_place = out_dir.resolve() == model_dir.resolve()
    remove_artifact_files(out_dir, keep=(HISTORY_FILE,) if in_place else ())
    contract = save_artifact(
        model,
        tokenizer,
        out_dir,
        thresholds=thresholds,
        info=info,
        model_name=model_name or (source_contract.model_name if in_place else None),
        model_version=model_version,
        fp16=fp16,
        calibration=calibration,
        base_rates=rates[0],
        training_rates=rates[1],
    )
    history = model_dir / HISTORY_FILE
    if history.is_file() and not in_place:
        shutil.copyfile(history, out_dir / HISTORY_FILE)
    if onnx:
        from training.data import DataOptions, load_split
        from training.onnx_export import export_onnx_graphs

        check = load_split(DataOptions(train=onnx_check))[1] if onnx_check else None
        info["onnx"] = export_onnx_graphs(out_dir, check)
        (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return contract


def calibrate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contract: ArtifactContract,
    data: Path | None,
    base_rates: BaseRates,
    info: dict[str, Any],
) -> CalibrationFit:
    """Fit (on the validation split of `data`) or re-shift the calibration, fold it into
    `model`'s head, and record it with its cross-fitted ECE table in `info["calibration"]`."""
    from training.calibration import (
        CalibrationError,
        calibration_table,
        fit_calibration,
        raw_logits,
        reshift,
        resolve_base_rates,
    )
    from training.data import DataOptions, load_split
    from training.modeling import fold_affine_into_head, predict

    labels = list(contract.labels)
    if data is None:
        if contract.calibration is None or contract.label_training_rates is None:
            raise CalibrationError(
                "--base-rates without --calibration-data needs an already calibrated source "
                "(its label_training_rates); give --calibration-data to fit one"
            )
        training = contract.label_training_rates
        targets = resolve_base_rates(labels, training, base_rates, contract.label_base_rates)
        fit = reshift(contract.calibration, labels, training, targets)
        table = (info.get("calibration") or {}).get("table")
    else:
        options = DataOptions(train=data, label_columns=labels)
        val = load_split(options)[1]
        assert val.labels is not None
        logits, _ = predict(model, tokenizer, val.texts, logits=True)
        fitted_on = f"the validation split: {options.describe_validation()}"
        fit = fit_calibration(
            logits,
            val.labels,
            labels,
            current=contract.calibration,
            base_rates=base_rates,
            fitted_on=fitted_on,
        )
        raw = raw_logits(logits, labels, contract.calibration)
        table = calibration_table(raw, val.labels, labels)
    fold_affine_into_head(model, fit.scale, fit.offset)
    info["calibration"] = _calibration_record(fit, table=table)
    return fit


def _calibration_record(fit: CalibrationFit, **extra: Any) -> dict[str, Any]:
    """What `training_info.json` keeps of a calibration (the card's calibration section reads
    it), plus `extra`; logs the fitted parameters."""
    log.info(
        "calibration: %s",
        ", ".join(
            f"{label} a={e.slope:.3f} b={e.intercept:+.3f} shift={e.prior_shift:+.3f}"
            for label, e in fit.calibration.labels.items()
        ),
    )
    return {
        "method": fit.calibration.method,
        "fitted_on": fit.calibration.fitted_on,
        "rows": fit.calibration.rows,
        "label_training_rates": fit.training_rates,
        "label_base_rates": fit.base_rates,
        **extra,
    }


def match_reference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contract: ArtifactContract,
    data: Path,
    reference_dir: Path,
    info: dict[str, Any],
) -> tuple[CalibrationFit, dict[str, float]]:
    """Calibrate `model` (trained on all rows of `data`) to reproduce the calibrated artifact in
    `reference_dir` (the same recipe trained on `data`'s training split and calibrated on its
    held-out rows), fitted on the texts of that training split, which both models learned from;
    fold it into the head. Returns the fit and the reference's thresholds (taken over: the
    probabilities mean the same). Records the fit, the reference and how closely the two
    agree on those texts in `info["calibration"]`."""
    import numpy as np

    from training.calibration import CalibrationError, match_calibration, sigmoid
    from training.data import DataOptions, load_split
    from training.modeling import fold_affine_into_head, load_classifier, load_tokenizer, predict

    reference = read_contract(resolve_model_dir(reference_dir))
    labels = list(contract.labels)
    if reference.calibration is None or reference.label_base_rates is None:
        raise CalibrationError(
            f"--calibration-from {reference_dir}: that artifact is not calibrated"
        )
    if sorted(reference.labels) != sorted(labels):
        raise CalibrationError(
            f"--calibration-from {reference_dir}: its labels {list(reference.labels)} are not "
            f"this model's {labels}"
        )
    training_rates = info.get("label_positive_rates")
    if not training_rates:
        raise CalibrationError(
            "the source's training_info.json does not record label_positive_rates (the label "
            "rates of its training rows), which the prior shift needs"
        )
    options = DataOptions(train=data, label_columns=labels)
    rows = load_split(options)[0]
    logits, _ = predict(model, tokenizer, rows.texts, logits=True)
    reference_model = load_classifier(resolve_model_dir(reference_dir))
    reference_raw, _ = predict(
        reference_model, load_tokenizer(resolve_model_dir(reference_dir)), rows.texts, logits=True
    )
    order = [list(reference.labels).index(label) for label in labels]
    reference_logits = reference_raw[:, order]
    described = f"{reference.model_name} {reference.model_version}"
    fit = match_calibration(
        logits,
        reference_logits,
        labels,
        current=contract.calibration,
        training_rates={label: float(training_rates[label]) for label in labels},
        base_rates=dict(reference.label_base_rates),
        fitted_on=(
            f"the texts of the training split ({options.describe_training()}) of {described}, "
            "to reproduce its probabilities"
        ),
        y=rows.labels,
    )
    fold_affine_into_head(model, fit.scale, fit.offset)
    thresholds = {label: reference.label_thresholds[label] for label in labels}
    ours = sigmoid(fit.scale * np.asarray(logits, dtype=np.float64) + fit.offset)
    theirs = sigmoid(reference_logits)
    limits = np.array([thresholds[label] for label in labels])
    reference_info_file = resolve_model_dir(reference_dir) / INFO_FILE
    reference_info = (
        json.loads(reference_info_file.read_text()) if reference_info_file.is_file() else {}
    )
    info["calibration"] = _calibration_record(
        fit,
        reference={
            "model_name": reference.model_name,
            "model_version": reference.model_version,
            "fitted_on": reference.calibration.fitted_on,
            "rows": reference.calibration.rows,
        },
        agreement_with_reference={
            label: {
                "mean_abs_difference": round(float(np.abs(ours[:, j] - theirs[:, j]).mean()), 6),
                "flag_agreement": round(
                    float(((ours[:, j] >= limits[j]) == (theirs[:, j] >= limits[j])).mean()), 6
                ),
            }
            for j, label in enumerate(labels)
        },
        # the reference's cross-fitted ECE on its held-out rows: this model has none
        table=(reference_info.get("calibration") or {}).get("table"),
    )
    return fit, thresholds
