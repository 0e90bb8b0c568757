"""Re-export a trained model as the artifact the worker serves (`moderation-train export`): the
steps in order, each in its own module: check the target (`training.export_target`), calibrate
(`training.export_calibration`), clear an earlier export's files and write the artifact
(`training.artifact_files`, `training.artifact_writer`), then the ONNX graphs
(`training.onnx_export`)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from schemas.artifact import ArtifactContract, read_contract
from training.artifact_files import (
    HISTORY_FILE,
    INFO_FILE,
    remove_artifact_files,
    resolve_model_dir,
)
from training.artifact_writer import save_artifact
from training.collapse import CollapseCheck, collapse_message, collapse_record
from training.export_calibration import RequestedRates, calibrate, match_reference
from training.export_target import check_export_target, exported_from
from training.sources import UsageError

log = logging.getLogger(__name__)


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
    base_rates: RequestedRates = None,
    calibration_from: Path | None = None,
    text_column: str = "comment_text",
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

    A model that looks collapsed (`training.collapse`), by the validation figures its training
    recorded or on `calibration_data`'s validation split, is refused (`UsageError`) unless
    `force`; with `force` it is written with its verdict (`config.json` `collapsed`), which the
    worker warns about at start. `text_column` names the text column of `calibration_data` and
    `onnx_check`. The base rates the probabilities assume, and where they came from, are logged.
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
    recorded = recorded_check(info)
    collapsed = collapse_record(recorded, "its recorded validation metrics")
    if not force:
        refuse_collapsed(recorded, model_dir, "its recorded validation metrics")
    info["exported_from"] = exported_from(model_dir)
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
            model,
            tokenizer,
            source_contract,
            calibration_data,
            calibration_from,
            info,
            text_column=text_column,
        )
        calibration, rates = fit.calibration, (fit.base_rates, fit.training_rates)
    elif calibration_data is not None or base_rates is not None:
        fit = calibrate(
            model,
            tokenizer,
            source_contract,
            calibration_data,
            base_rates,
            info,
            text_column=text_column,
        )
        if "collapse" in info["calibration"]:
            where = f"the validation split of {calibration_data}"
            check = CollapseCheck.from_dict(info["calibration"]["collapse"])
            if not force:
                refuse_collapsed(check, model_dir, where)
            collapsed = collapse_record(check, where) or collapsed
        thresholds = fit.map_thresholds(thresholds)
        calibration, rates = fit.calibration, (fit.base_rates, fit.training_rates)
    elif rates[0] is not None:
        log.info("base rates carried over from the calibrated source: %s", rates[0])
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
        collapsed=collapsed,
    )
    if collapsed is not None:
        log.warning(
            "exported although collapsed (--force); the worker warns when it serves it: %s",
            collapsed.detail,
        )
    history = model_dir / HISTORY_FILE
    if history.is_file() and not in_place:
        shutil.copyfile(history, out_dir / HISTORY_FILE)
    if onnx:
        from training.data import DataOptions, load_split
        from training.onnx_export import export_onnx_graphs

        check = None
        if onnx_check is not None:
            options = DataOptions(
                train=onnx_check, text_column=text_column, label_columns=list(contract.labels)
            )
            check = load_split(options)[1]
        info["onnx"] = export_onnx_graphs(out_dir, check)
        (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return contract


def recorded_check(info: dict[str, Any]) -> CollapseCheck | None:
    """The collapse figures a training run recorded in its metrics (`training.run`), or for a
    run that predates them, its macro ROC-AUC alone; None where there are none."""
    metrics = info.get("metrics") or {}
    if metrics.get("collapse"):
        return CollapseCheck.from_dict(metrics["collapse"])
    if isinstance(metrics.get("mean_roc_auc"), int | float):
        return CollapseCheck(int(metrics.get("n") or 0), {}, float(metrics["mean_roc_auc"]))
    return None


def refuse_collapsed(check: CollapseCheck | None, model_dir: Path, where: str) -> None:
    """`UsageError` (one line, exit 2) for a collapsed model."""
    if check is not None and check.collapsed:
        raise UsageError(
            collapse_message(check, str(model_dir), where) + "; or pass --force to export it"
        )
