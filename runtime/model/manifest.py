"""The manifest protocol, read and written in one module: manifest.json beside the model files lists each file's
sha256 ({"files": {name: sha256}}, plus "replacing" while an export commits), and the runtime refuses a model the
manifest does not vouch for. Also where the shipped model lives."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tumor_runtime.core.contract import (  # older or foreign models: first output
    DEFAULT_MODEL,
    MANIFEST,
)
from tumor_runtime.core.errors import ModelError
from tumor_runtime.core.fileio import atomic_write_text, sha256_file


def default_model_path() -> Path:
    """The shipped int8 model: inside the installed package, or artifacts/ of a source checkout."""
    try:
        from importlib.resources import files

        packaged = Path(str(files("tumor_runtime.artifacts") / DEFAULT_MODEL))
        if packaged.is_file():
            return packaged
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "artifacts" / DEFAULT_MODEL  # runtime/model/ -> the repository


def read_manifest(folder: Path) -> dict | None:
    """manifest.json of `folder` as {"files": {name: sha256}, "replacing": {name: sha256}}, or None if absent.

    "replacing" lists the hashes of files that an export is about to replace: while it
    renames, both the old and the new file are vouched for (see tumor_export.pipeline).
    """
    manifest = folder / MANIFEST
    if not manifest.exists():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        files, replacing = data["files"], data.get("replacing", {})
        if not isinstance(files, dict) or not isinstance(replacing, dict):
            raise TypeError
        if not all(isinstance(v, str) for v in [*files.values(), *replacing.values()]):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ModelError(
            f'{manifest} is not a valid manifest (unreadable, or not {{"files": {{name: sha256}}}})'
        ) from None
    return {"files": files, "replacing": replacing}


def verify_manifest(path: Path) -> None:
    """If a manifest.json lies beside the model, it must list the model and its sha256 must match. A symlink
    is judged by the manifest beside the file it points to (where the export wrote both)."""
    path = Path(os.path.realpath(path))
    manifest = read_manifest(path.parent)
    if manifest is None:
        return
    accepted = {manifest["files"].get(path.name), manifest["replacing"].get(path.name)} - {None}
    if not accepted:
        raise ModelError(
            f"{path.name} is not listed in {path.parent / MANIFEST}: refusing a model the export "
            "did not vouch for (pass verify=False / remove the manifest to use it anyway)"
        )
    if sha256_file(path) not in accepted:
        raise ModelError(
            f"{path} does not match the sha256 in {path.parent / MANIFEST}: refusing a modified or corrupt model"
        )


def commit(out: Path, written: dict[str, Path], stale: list[str], log=print) -> None:
    """Move the new models into `out` and re-vouch the manifest, usable at every instant:

    1. the manifest lists the new hashes and, under "replacing", the old ones, and drops `stale` files
       (an int8 model of an earlier checkpoint, when only FP32 was exported): those are deleted;
    2. each model is renamed into place (one atomic rename each): old or new, it is vouched for;
    3. the manifest is rewritten without "replacing".
    """
    try:
        manifest = read_manifest(out) or {"files": {}, "replacing": {}}
    except ModelError:
        manifest = {"files": {}, "replacing": {}}  # unreadable: rebuilt from what this export writes
    files = {k: v for k, v in manifest["files"].items() if k not in stale}
    new = {name: sha256_file(path) for name, path in written.items()}
    replacing = {name: files[name] for name in new if name in files}
    atomic_write_text(out / MANIFEST, json.dumps({"files": files | new, "replacing": replacing}, indent=2))
    for name in stale:
        if (out / name).exists():
            (out / name).unlink()
            log(f"Removed {name}: it was exported from an earlier checkpoint")
    for name, path in written.items():
        os.replace(path, out / name)  # same folder: each rename is atomic
    atomic_write_text(out / MANIFEST, json.dumps({"files": files | new}, indent=2))
