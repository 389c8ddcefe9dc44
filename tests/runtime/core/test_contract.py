"""The stages' shared names and the version record that checkpoints and ONNX metadata carry."""

import platform
from importlib import metadata

import tumor_runtime
from tumor_runtime.core.system import package_version, tool_versions


def test_package_version_reads_the_installed_distribution_and_none_when_absent():
    assert package_version("numpy") == metadata.version("numpy")
    assert package_version("no-such-distribution-xyz") is None


def test_tool_versions_names_the_kit_python_and_each_package_asked_for():
    versions = tool_versions("numpy", "no-such-distribution-xyz")
    assert versions == {
        "tumor_kit": tumor_runtime.__version__,
        "python": platform.python_version(),
        "numpy": metadata.version("numpy"),
        "no-such-distribution-xyz": None,
    }
    assert tool_versions() == {"tumor_kit": tumor_runtime.__version__, "python": platform.python_version()}
