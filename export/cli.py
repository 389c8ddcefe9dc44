"""`tumor-export`: a thin click command over tumor_export.pipeline.run_export."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tumor_runtime.core import scoring
from tumor_runtime.core.command import FiniteFloat, version_option
from tumor_runtime.core.contract import FP32_MODEL, INT8_MODEL
from tumor_runtime.core.errors import EXIT_PARTIAL


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(dir_okay=False),
    help="model.pth written by tumor-train (for example runs/<time>/model.pth).",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    help="Output folder [default: the checkpoint's folder]. Replacing the shipped model is explicit: --out artifacts.",
)
@click.option(
    "--int8",
    is_flag=True,
    help="Also write model.int8.onnx (ONNX Runtime static int8, QDQ). Without it, "
    "a model.int8.onnx of an earlier export in the folder is removed.",
)
@click.option(
    "--calibration",
    type=click.Path(file_okay=False),
    help="Calibration images [default: the training folder recorded in the checkpoint, validation excluded].",
)
@click.option("--calibration-size", default=256, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option(
    "--calibration-method",
    default="percentile",
    show_default=True,
    type=click.Choice(["percentile", "minmax", "entropy"]),
    help="Activation ranges: the 99.999th percentile, the full min-max, or KL entropy (with ONNX "
    "Runtime's 128-bin default, entropy often equals minmax).",
)
@click.option("--activation-type", default="u8", show_default=True, type=click.Choice(["u8", "s8"]))
@click.option(
    "--evaluate",
    "--eval",
    "eval_dir",
    type=click.Path(file_okay=False),
    help="Labelled folder DIR/<class>/ for the parity gate and the tumor threshold, which is "
    f"{scoring.THRESHOLD_RULE} [default: the checkpoint's validation split, if its images are at "
    "hand; FP32-only exports need none].",
)
@click.option(
    "--max-f2-drop",
    default=0.005,
    show_default=True,
    type=FiniteFloat(0, 1),
    help="Largest macro-F2 loss (0 to 1) int8 may have against FP32 before layers are kept in float.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the calibration sample.")
@click.option(
    "--temperature",
    metavar="fit|T",
    help="Calibrate the confidences: fit the temperature on the evaluation images (never ones the model trained "
    "on), or give T (e.g. fitted on a --cv run's out-of-fold predictions). Stored in the model; the tumor "
    "threshold is chosen on the calibrated probabilities. [default: none]",
)
@click.option(
    "--cv",
    type=click.Path(file_okay=False),
    help="The tumor-train --cv run of this model's recipe (for a final fit, which has no unseen images): its fold "
    "models, each on its own validation images, give the temperature, the tumor threshold and the "
    "out-of-distribution thresholds, so that all three hold for slices the model never saw.",
)
@version_option("tumor-export")
def main(**options) -> None:
    """Export a trained model to ONNX (FP32) and, with --int8, to a static int8 ONNX model.

    Every export is checked (onnx checker, ONNX Runtime against torch) and the int8 model
    must keep FP32's macro F2 within --max-f2-drop. Writes model.onnx, model.int8.onnx,
    export_report.json and manifest.json; nothing is written if a check fails.
    """
    from tumor_runtime.core.command import guarded, require_extra
    from tumor_runtime.core.signals import interrupted_exit_code, raise_on_sigterm

    require_extra("export", "tumor-export")
    raise_on_sigterm()
    try:
        guarded(export_command, options)
    except KeyboardInterrupt as exc:
        click.echo("Stopped: interrupted; the output folder is unchanged", err=True)
        sys.exit(interrupted_exit_code(exc))


def export_command(options: dict) -> None:
    from tumor_export.pipeline import ExportOptions, run_export
    from tumor_runtime.core.command import fail
    from tumor_runtime.core.signals import interrupted_exit_code

    paths = {
        k: Path(options[k]) if options[k] else None for k in ("checkpoint", "out", "calibration", "eval_dir", "cv")
    }
    opts = ExportOptions(**(options | paths))
    try:
        report = run_export(opts, log=lambda msg: click.echo(msg, err=True))
    except OSError as exc:
        fail(f"could not write the export: {exc.strerror or exc}", EXIT_PARTIAL)
    try:
        click.echo(format_report(report))
        click.echo(written_line(report, opts), err=True)
    except KeyboardInterrupt as exc:  # the export is committed: say so, not "the output folder is unchanged"
        click.echo(f"Stopped: interrupted after the export was written. {written_line(report, opts)}", err=True)
        sys.exit(interrupted_exit_code(exc))


def format_report(report: dict) -> str:
    lines = [f"{name}: {info['bytes'] / 1e6:.2f} MB" for name, info in report["files"].items()]
    if report["fp32"] is None:
        lines.append(
            f"FP32 not scored (no evaluation images); tumor threshold {report['tumor_threshold']:.4f} (default)"
        )
    else:
        lines.append(f"FP32 macro F2 {report['fp32']['f2_macro']:.4f}")
    if "int8" in report:
        p = report["parity"]
        lines.append(
            f"int8 macro F2 {report['int8']['f2_macro']:.4f}, top-1 agreement {p['top1_agreement']:.4f}, "
            f"max probability difference {p['max_probability_diff']:.4f}, layers kept in float: "
            f"{'; '.join(p.get('layers_kept_float', p['nodes_kept_float'])) or 'none'}"
        )
    if report["fp32"] is not None:
        stats = report["fp32"]["screening"]
        rule, shown = scoring.THRESHOLD_RULE, ": flags"
        if report.get("held_out"):  # chosen on the --cv run's held-out images; shown on the evaluation images
            rule, shown = (
                rule.replace("the evaluation images'", "the held-out images'"),
                "; on the evaluation images it flags",
            )
        lines.append(
            f"Tumor threshold {report['tumor_threshold']:.4f} ({rule}){shown} "
            f"{percent(stats['sensitivity'])} of tumor slices and {percent(stats['false_alarm_rate'])} of "
            "no-tumor slices (false alarms)"
        )
        warning = scoring.threshold_warning(stats)
        if warning:
            lines.append(warning)
    held_out = report.get("held_out")
    if held_out:
        stats, margins = held_out["screening"], held_out["ood_margins"]
        lines.append(
            f"On the {held_out['images']} held-out images of {held_out['folder']}: the threshold flags "
            f"{percent(stats['sensitivity'])} of tumor slices and {percent(stats['false_alarm_rate'])} of no-tumor "
            f"slices; out-of-distribution margins features {margins['features']:.2f}, image {margins['image']:.2f}"
        )
    t = report.get("temperature")
    if t and t["source"] != "none":
        where = "those held-out images" if held_out else "the evaluation images"
        lines.append(
            f"Temperature {t['value']:.3f} ({t['source']}): expected calibration error on {where} "
            f"{t['ece_before']:.4f} -> {t['ece_after']:.4f}"
        )
    return "\n".join(lines)


def percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.1%}"


def written_line(report: dict, opts) -> str:
    """What was written, where, in how long, and the command that uses it."""
    folder = opts.out or opts.checkpoint.parent
    model = INT8_MODEL if INT8_MODEL in report["files"] else FP32_MODEL
    return (
        f"Wrote {', '.join(report['files'])}, export_report.json and manifest.json to {folder}/ in "
        f"{report['seconds']:.1f}s. Next: tumor-infer -m {folder / model} FOLDER/"
    )
