"""Every command the README shows, checked so that none can go stale.

Each line of a ```bash block is one of: a kit command that is run here as written (placeholders such as DIR or
scans/ point at small generated data, outputs land in a temporary folder); a kit command too long or too
remote to run here (training for an hour, a GPU, a Ray cluster, a server), whose options are parsed by the
command's own parser with the same placeholders; or a tool whose file, extra or marker must exist. A new
command in the README that fits none of these fails the test until it is placed.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import click
import pytest
import tomllib
from click.testing import CliRunner

from tests.helpers.datasets import REPO, SAMPLES, make_dataset

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMANDS = {
    "tumor-train": "tumor_train.cli",
    "tumor-export": "tumor_export.cli",
    "tumor-infer": "tumor_runtime.cli.infer",
    "tumor-serve": "tumor_runtime.cli.serve",
}
# Run as written: quick and local. Everything else of the kit's commands is parsed only.
RUN = [r"^tumor-infer ", r"^tumor-export --checkpoint (model\.pth|runs/)"]
PARSE_ONLY = [r"--ray ", r"^tumor-train ", r"^tumor-serve"]


def shell_commands(path: Path) -> list[str]:
    """The commands of a document's bash blocks: continuation lines joined, comments dropped, `a && b` split."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)
    text = "\n".join(b.replace("\\\n", " ") for b in blocks)
    lines = [re.sub(r"(^|\s)#.*$", "", line).strip() for line in text.splitlines()]
    return [part.strip() for line in lines if line for part in line.split("&&") if part.strip()]


ALL = [(doc.name, command) for doc in DOCS for command in shell_commands(doc)]


@pytest.fixture(scope="module")
def place(tmp_path_factory, trained, recipe):
    """A working folder where every placeholder of the README names something real and small."""
    root = tmp_path_factory.mktemp("docs")
    (root / "artifacts").symlink_to(REPO / "artifacts")
    data = make_dataset(root / "path" / "to" / "brain-tumor-mri", per_class=6)
    for name in ("DIR", "TRAIN_DIR", "series", "archive"):
        (root / name).symlink_to(data, target_is_directory=True)
    make_dataset(root / "labelled", per_class=2, seed=1)
    (root / "VAL_DIR").symlink_to(root / "labelled", target_is_directory=True)
    (root / "scans").mkdir()  # a plain folder of slices
    for image in sorted((root / "labelled").rglob("*.jpg")):
        shutil.copy(image, root / "scans" / f"{image.parent.name}_{image.name}")
    shutil.copy(SAMPLES / "glioma" / sorted(p.name for p in (SAMPLES / "glioma").iterdir())[0], root / "scan.png")
    shutil.copy(trained / "model.pth", root / "model.pth")
    (root / "runs" / "20261127-150000").mkdir(parents=True)
    shutil.copy(trained / "model.pth", root / "runs" / "20261127-150000" / "model.pth")
    (root / "runs" / "cv").symlink_to(recipe / "cv", target_is_directory=True)  # a real --cv run and its final fit
    shutil.copytree(recipe / "final", root / "runs" / "final")  # the export writes beside it
    return root


def kit_arguments(command: str) -> tuple[str, list[str]] | None:
    words = shlex.split(command.replace("...", ""))
    if words[0] in COMMANDS:
        return COMMANDS[words[0]], words[1:]
    if words[0] == "torchrun":
        at = words.index("-m")
        assert words[at + 1] == "tumor_train"
        return COMMANDS["tumor-train"], words[at + 2 :]
    return None


def check_tool(command: str) -> None:
    """Not a kit command: the file, extra, marker or tool it names must exist."""
    words = shlex.split(command)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    if words[0] == "pip":
        extras = {e for w in words for e in re.findall(r"\[([\w,]+)\]", w) for e in e.split(",")}
        assert extras <= set(pyproject["project"]["optional-dependencies"]), command
    elif words[0] == "pytest":
        marks = [words[i + 1] for i, w in enumerate(words) if w == "-m"]
        assert all(
            any(m.startswith(f"{mark}:") for m in pyproject["tool"]["pytest"]["ini_options"]["markers"])
            for mark in marks
        ), command
    elif words[0] in ("python",):
        assert (REPO / words[1]).is_file() or (REPO / words[2].replace(".", "/")).with_suffix(".py").is_file(), command
    elif words[0].startswith(("benchmarks/", "tools/")):
        assert (REPO / words[0]).is_file() and (REPO / words[0]).stat().st_mode & 0o111, command
    elif words[0] in ("lint-imports", "ruff", "mypy"):  # a gate: configured here, and run by .ci/run
        assert {"lint-imports": "importlinter"}.get(words[0], words[0]) in pyproject["tool"], command
        assert " ".join(words) in (REPO / ".ci" / "run").read_text(), command
    elif words[0] == "curl":
        assert any("/predictions/tumor" in w for w in words), command
    else:
        pytest.fail(f"the README shows a command this check does not know: {command}")


@pytest.mark.parametrize("doc, command", ALL, ids=[f"{d}: {c[:60]}" for d, c in ALL])
def test_every_documented_command_works_as_written(doc, command, place, monkeypatch):
    import importlib

    kit = kit_arguments(command)
    if kit is None:
        return check_tool(command)
    module, args = kit
    main = importlib.import_module(module).main
    monkeypatch.chdir(place)
    if any(re.search(p, command) for p in PARSE_ONLY) or not any(re.search(p, command) for p in RUN):
        try:
            main.make_context(command.split()[0], list(args))  # the options exist and their values parse
        except click.exceptions.Exit:
            pass
        return
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, f"{command}\n{result.output}"


def test_the_check_sees_the_readme():
    assert len(ALL) > 30 and any(c.startswith("tumor-infer -r artifacts/samples --heatmaps") for _, c in ALL)
