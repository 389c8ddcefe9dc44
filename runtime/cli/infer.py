"""`tumor-infer`: classify MRI slices with an ONNX model, torch-free."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass

import click

from tumor_runtime.core.command import FiniteFloat, version_option
from tumor_runtime.core.errors import EXIT_OK, EXIT_PARTIAL
from tumor_runtime.core.options import MAX_BATCH_SIZE
from tumor_runtime.model.backends import BACKENDS

FORMATS = ["table", "csv", "json", "jsonl"]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("paths", nargs=-1, type=click.Path())
@click.option(
    "--model",
    "-m",
    type=click.Path(dir_okay=False),
    help="ONNX model exported by tumor-export [default: the shipped int8 model].",
)
@click.option("--recursive", "-r", is_flag=True, help="Also look in subfolders of the folders given.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(FORMATS))
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Write results to this regular file (atomically; through a symlink to its file) instead of "
    "stdout; '-' is stdout. Never one of the inputs.",
)
@click.option(
    "--evaluate",
    is_flag=True,
    help="PATHS is one folder with a subfolder per class: print macro/weighted F2, accuracy, "
    "tumor sensitivity, the tumor flag's sensitivity and false alarms, and the confusion matrix.",
)
@click.option(
    "--tumor-threshold",
    type=FiniteFloat(0, 1),
    help="Flag a tumor when P(tumor) = 1 - P(notumor) reaches this [default: stored in the model].",
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, MAX_BATCH_SIZE))
@click.option(
    "--threads",
    type=click.IntRange(0),
    default=0,
    help="Inference threads and decoding workers (threads; processes for more than 1,000 files); 0 = the "
    "cores available (CPU affinity and container limit), which is also the maximum.  [default: 0]",
)
@click.option(
    "--heatmaps",
    type=click.Path(file_okay=False),
    help="Write one overlay PNG per classified input into this folder: the slice, the predicted class's "
    "activation map, and a legend (label, confidence, P(tumor)). Needs a model with a 'cam' output.",
)
@click.option(
    "--model-info",
    is_flag=True,
    help="Print the model's card (classes, input, threshold, precision, sha256, provenance) as JSON and exit.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option(
    "--backend",
    default="onnxruntime",
    show_default=True,
    type=click.Choice(BACKENDS),
    help="Inference engine for the same ONNX file: openvino needs the [openvino] extra; auto takes it where "
    "it is installed and the CPU has AMX or AVX-512 VNNI, else onnxruntime.",
)
@click.option(
    "--ray",
    "ray_address",
    metavar="auto|ADDRESS",
    help="Classify on a Ray cluster ([ray] extra): auto joins the cluster in RAY_ADDRESS, else starts a "
    "private one on this machine for the run; ADDRESS is a cluster's HOST:PORT or ray://HOST:10001 "
    "(e.g. 127.0.0.1:6379 for a local `ray start --head`). Same rows as a local run; --threads is "
    "then the CPUs of each Ray actor [0 = 2]. Inputs must be readable at the same path on every node.",
)
@version_option("tumor-infer")
def main(**options) -> None:
    """Classify brain MRI slices (JPEG, PNG, BMP, TIFF) as glioma, meningioma, notumor or pituitary.

    PATHS are image files, DICOM files and folders. Every row says whether the input looks
    like the brain slices the model knows (in_distribution; stderr counts the ones that do not).
    Exit code 0: all classified; 1: some inputs could not be read (each gets an error row) or
    the results could not be written; 2: usage error; 70: internal error; 130: interrupted.
    For research and education, not for diagnosis.
    """
    from tumor_runtime.core.command import fail, guarded
    from tumor_runtime.core.signals import interrupted_exit_code, raise_on_sigterm

    raise_on_sigterm()
    try:
        sys.exit(
            guarded(
                run_command,
                InferOptions(**options),
                passthrough=(OSError,),
            )
        )
    except KeyboardInterrupt as exc:
        click.echo(
            "Stopped: interrupted; no output file was written"
            if options["output"] not in (None, "-")
            else "Stopped: interrupted",
            err=True,
        )
        sys.exit(interrupted_exit_code(exc))
    except BrokenPipeError:  # e.g. `tumor-infer dir/ | head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_OK)
    except OSError as exc:  # a full disk, a vanished folder: the results could not be written
        fail(f"could not write the results: {exc.strerror or exc}", EXIT_PARTIAL)


@dataclass(frozen=True)
class InferOptions:
    """tumor-infer's options, as its --help describes them."""

    paths: tuple[str, ...]  # files, DICOM files and folders
    model: str | None  # the ONNX file; None: the shipped int8 model
    recursive: bool  # also list subfolders
    fmt: str  # table, csv, json or jsonl
    output: str | None  # -o FILE (written atomically); None or "-": stdout
    evaluate: bool  # PATHS is one labelled folder: print scores instead of rows
    tumor_threshold: float | None  # None: the model's own
    batch_size: int
    threads: int  # 0: every core available
    heatmaps: str | None  # folder for the overlay PNGs
    model_info: bool  # print the model card and stop
    quiet: bool  # no progress bar, no closing line
    backend: str = "onnxruntime"  # onnxruntime, openvino or auto
    ray_address: str | None = None  # --ray auto|HOST:PORT


def run_command(opts: InferOptions) -> int:
    from tumor_runtime.cli.outputs import (
        Counted,
        destination,
        heatmap_folder,
        output_target,
        progress,
        say_written,
        write_evaluation,
        write_records,
    )
    from tumor_runtime.core.command import fail
    from tumor_runtime.core.errors import KitError, RunStopped, UsageError
    from tumor_runtime.imaging.listing import collect, labelled
    from tumor_runtime.inference.classifier import Classifier
    from tumor_runtime.model.backends import openvino_caveat

    try:
        if opts.ray_address is not None and (opts.heatmaps or opts.evaluate):
            raise UsageError("--ray classifies only: run --heatmaps and --evaluate without --ray")
        classifier = Classifier.load(
            opts.model,
            threads=opts.threads or None,
            batch_size=opts.batch_size,
            tumor_threshold=opts.tumor_threshold,
            backend=opts.backend,
        )
        caveat = openvino_caveat(opts.backend)
        if caveat:
            click.echo(f"warning: {caveat}", err=True)
        if opts.model_info:
            click.echo(json.dumps(classifier.card(), indent=2))
            return 0
        if opts.evaluate:
            if len(opts.paths) != 1:
                raise UsageError("--evaluate takes exactly one folder")
            files, labels = frames_with_labels(*labelled(opts.paths[0], classifier.info.classes))
        else:
            files, labels = collect(list(opts.paths), opts.recursive), None
        target = output_target(opts.output, files)
        if opts.heatmaps:
            heatmap_folder(opts.heatmaps, classifier)
        if opts.ray_address is not None:
            from tumor_runtime.inference.ray_driver import isolated_ray_records  # multiprocessing: only for --ray
        rows = (
            classifier.iter_predict(files, heatmaps=bool(opts.heatmaps))
            if opts.ray_address is None
            else isolated_ray_records(
                files,
                model=opts.model,
                address=opts.ray_address,
                threads=opts.threads or 2,
                batch_size=opts.batch_size,
                tumor_threshold=opts.tumor_threshold,
                backend=opts.backend,
            )
        )
    except KitError as exc:
        fail(str(exc), exc.exit_code)
    try:
        with contextlib.ExitStack() as stack:
            try:  # the output file is created before any work, so an unwritable target costs nothing
                stream = stack.enter_context(destination(target))
            except OSError as exc:
                fail(f"cannot write {opts.output}: {exc.strerror or exc}")
            counted = Counted(progress(classifier, files, rows, opts.quiet, opts.heatmaps))
            if opts.evaluate:
                code = write_evaluation(classifier, counted, labels, opts.fmt, stream)
            else:
                code = write_records(classifier, counted, opts.fmt, stream)
    except RunStopped as exc:  # the atomic file was discarded: say so, rather than "the rows were written"
        kept = (
            f"nothing was written to {opts.output}"
            if target is not None
            else "the rows before it were printed, the rest were not classified"
        )
        fail(f"{exc}: {kept}", exc.exit_code)
    if not opts.quiet:
        say_written(counted, target, opts.heatmaps, opts.evaluate)
    return code


def frames_with_labels(files: list, labels: list[int]) -> tuple[list, list[int]]:
    """Each DICOM file becomes its frames (or one error item) before scoring, each frame with its file's
    label: one label per row, so a multi-frame file never shifts the labels after it."""
    from tumor_runtime.inference.classifier import expand_dicom

    pairs = [(item, label) for file, label in zip(files, labels) for item in expand_dicom([file])]
    return [p[0] for p in pairs], [p[1] for p in pairs]
