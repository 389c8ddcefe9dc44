"""Running the kit's commands in subprocesses (with torch blocked), their one-line errors, ports and health."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from click.testing import CliRunner


def block_imports(*packages: str) -> str:
    """Python source that makes importing any of `packages` fail (an install without them): prepend it to a
    `python -c` program."""
    return (
        "import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {tuple(packages)!r}:\n"
        "            raise ImportError('blocked: ' + name)\nsys.meta_path.insert(0, Block())\n"
    )


BLOCK_TORCH = block_imports("torch", "torchvision", "sklearn", "onnx", "onnxscript", "matplotlib", "tqdm")


# Each stage's command-line module: tumor-train, tumor-export and tumor-infer.
COMMAND_MODULES = {
    "tumor_train": "tumor_train.cli",
    "tumor_export": "tumor_export.cli",
    "tumor_runtime": "tumor_runtime.cli.infer",
}


def run(module: str, args, cwd=None) -> subprocess.CompletedProcess:
    """The command in this process (click's runner: fast, no torch import per call), as a CompletedProcess."""
    import importlib

    main = importlib.import_module(COMMAND_MODULES[module]).main
    previous = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(previous)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the commands turn SIGTERM into an exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def infer(args, **kwargs):
    return run("tumor_runtime", args, **kwargs)


def one_line_error(result, code: int = 2) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error")].__len__() == 1, result.stderr


def run_infer(args) -> subprocess.CompletedProcess:
    """tumor-infer in a new interpreter (signals, exit codes and stdout as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "tumor_runtime", *map(str, args)], capture_output=True, text=True)


# A tumor-serve process ---------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(port: int, seconds: float = 60.0) -> None:
    """Poll /ping of a tumor-serve on 127.0.0.1 until its model has loaded (or `seconds` pass)."""
    import json
    import time
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if (
                json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1).read())["status"]
                == "Healthy"
            ):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
