"""`tumor-serve`: run the HTTP service (tumor_runtime.serving.app) with uvicorn."""

from __future__ import annotations

import ipaddress
import os
import socket

import click

from tumor_runtime.core.command import FiniteFloat, version_option
from tumor_runtime.core.options import MAX_UPLOAD_MB, UPLOAD_MB_RANGE
from tumor_runtime.model.backends import BACKENDS

GRACEFUL_SHUTDOWN_S = 10  # on SIGTERM/Ctrl-C: stop accepting, give in-flight requests this long, then exit
MAX_AUTO_WORKERS = 8  # --workers 0: one process per core, but no more (each holds a model session and ~100 MB)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def check_port_free(host: str, port: int) -> None:
    """One line before the banner when the port is taken (uvicorn would print the banner, then exit 3)."""
    from tumor_runtime.core.command import fail

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
            probe.bind((host, port))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port} ({exc.strerror or exc}): stop what uses it or pass --port")


def check_token(token: str) -> None:
    """Refuse at start a token no client can send: every API call would then be 401."""
    from tumor_runtime.core.command import fail

    if not token.strip():
        fail("--token is empty or blank: give a real secret, or leave --token out")
    if token != token.strip():
        fail("--token starts or ends with white space, which HTTP strips from the header: remove it")
    if not (token.isascii() and token.isprintable()):
        fail(
            "--token has characters outside printable ASCII, which an Authorization header cannot carry "
            "alike from every client: use letters, digits and punctuation"
        )


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--model",
    "-m",
    type=click.Path(dir_okay=False),
    help="ONNX model exported by tumor-export [default: the shipped int8 model].",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on: localhost only by default. Another address without a token is warned of.",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(0, 64),
    help="Server processes, each with its own model session; 0 = one per available core (up to 8), each with one "
    "inference thread unless --threads says otherwise: more requests/s under load (one process leaves cores idle).",
)
@click.option(
    "--token",
    envvar="TUMOR_SERVE_TOKEN",
    help="Bearer token required on every route but /ping [env: TUMOR_SERVE_TOKEN].",
)
@click.option(
    "--max-upload-mb",
    default=MAX_UPLOAD_MB,
    show_default=True,
    type=FiniteFloat(*UPLOAD_MB_RANGE),
    help="Largest request body, however it is sent (one file, a multipart form, chunked); bigger get 413.",
)
@click.option(
    "--threads",
    type=click.IntRange(0),
    default=0,
    help="Inference threads per worker; 0 = the cores available.  [default: 0]",
)
@click.option(
    "--tumor-threshold",
    type=FiniteFloat(0, 1),
    help="Flag a tumor when P(tumor) reaches this [default: stored in the model].",
)
@click.option(
    "--backend",
    default="onnxruntime",
    show_default=True,
    type=click.Choice(BACKENDS),
    help="Inference engine, as for tumor-infer.",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="One line per request on stderr: time, client, method and path, status, milliseconds.",
)
@version_option("tumor-serve")
def main(model, host, port, workers, token, max_upload_mb, threads, tumor_threshold, backend, access_log) -> None:
    """Serve the classifier over HTTP (TorchServe's inference API) with a web page at /.

    POST /predictions/tumor with an image body (or a multipart form with files), GET /ping,
    GET /models/tumor. Research and education only: not a medical device.
    """
    from tumor_runtime.core.command import fail, silence_reader_warnings
    from tumor_runtime.core.system import installed, missing_extra

    silence_reader_warnings()
    missing = [m for m in ("starlette", "uvicorn", "multipart") if not installed(m)]
    if missing:
        fail(missing_extra("tumor-serve", "serve", missing))
    if model and not os.path.isfile(model):
        fail(f"model {model} does not exist")
    if token is not None:
        check_token(token)
    if not token and not is_loopback(host):
        click.echo(f"warning: listening on {host} without --token: anyone who can reach it can use the model", err=True)
    check_port_free(host, port)
    from tumor_runtime.model.backends import openvino_caveat

    caveat = openvino_caveat(backend)
    if caveat:
        click.echo(f"warning: {caveat}", err=True)
    import uvicorn

    workers, threads = worker_layout(workers, threads)
    os.environ.update(
        {
            "TUMOR_SERVE_MODEL": model or "",
            "TUMOR_SERVE_TOKEN": token or "",
            "TUMOR_SERVE_MAX_UPLOAD_MB": str(max_upload_mb),
            "TUMOR_SERVE_THREADS": str(threads),
            "TUMOR_SERVE_WORKERS": str(workers),
            "TUMOR_SERVE_BACKEND": backend,
            "TUMOR_SERVE_ACCESS_LOG": "1" if access_log else "0",
            "TUMOR_SERVE_TUMOR_THRESHOLD": "" if tumor_threshold is None else repr(tumor_threshold),
        }
    )
    click.echo(
        f"tumor-serve: http://{host}:{port}/ with {model or 'the shipped int8 model'}; "
        f"{'a bearer token is required' if token else 'no token required'}; Ctrl-C stops it.",
        err=True,
    )
    uvicorn.run(
        "tumor_runtime.serving.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


def worker_layout(workers: int, threads: int) -> tuple[int, int]:
    """(processes, inference threads each) for --workers and --threads; 0 workers: one per available core, up to
    MAX_AUTO_WORKERS. Threads left at 0 are the cores shared out, so that the processes do not oversubscribe them.
    One process runs its requests' Python code under one GIL and kept 2 cores 70 % busy (docs/serving.md)."""
    from tumor_runtime.core.system import available_cores

    cores = available_cores()
    workers = workers or max(1, min(cores, MAX_AUTO_WORKERS))
    return workers, threads or (0 if workers == 1 else max(1, cores // workers))


if __name__ == "__main__":
    main()
