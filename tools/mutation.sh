#!/usr/bin/env bash
# Mutation testing (mutmut) of the modules whose arithmetic and decisions must be right:
# runtime/metrics.py, runtime/tumor.py, runtime/preprocess.py, export/gate.py, train/dedup.py.
#
# mutmut derives module names from file paths, while this repository maps folders to
# import names (runtime/ -> tumor_runtime). So the packages are staged under their import
# names in .mutation/ (git-ignored), and mutmut runs there on the fast unit tests.
#
#   tools/mutation.sh            # prints mutmut's results and the kill rate
set -euo pipefail
cd "$(dirname "$0")/.."
stage=.mutation
rm -rf "$stage"
mkdir -p "$stage"
cp -r runtime "$stage/tumor_runtime"
cp -r export "$stage/tumor_export"
cp -r train "$stage/tumor_train"
cp -r artifacts "$stage/artifacts"
mkdir -p "$stage/tests"
cp tests/__init__.py tests/conftest.py tests/onnx_fakes.py tests/test_units.py "$stage/tests/"
cat > "$stage/pyproject.toml" <<'TOML'
[tool.mutmut]
source_paths = ["tumor_runtime/metrics.py", "tumor_runtime/tumor.py", "tumor_runtime/preprocess.py",
                "tumor_export/gate.py", "tumor_train/dedup.py"]
also_copy = ["tumor_runtime", "tumor_export", "tumor_train", "artifacts"]
pytest_add_cli_args_test_selection = ["tests/test_units.py"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
process_isolation = "forkserver"  # torch and onnxruntime are not fork-safe once used

[tool.pytest.ini_options]
testpaths = ["tests"]
TOML
cd "$stage"
python -m mutmut run --max-children "${MUTMUT_CHILDREN:-2}" >/dev/null 2>&1 || true
python -m mutmut results --all true > results.txt || true
python - <<'PY'
import collections
counts = collections.Counter(line.rsplit(":", 1)[-1].strip() for line in open("results.txt") if ":" in line)
total = sum(counts.values())
killed = counts.get("killed", 0) + counts.get("timeout", 0)
print(dict(counts))
print(f"mutants {total}, killed {killed}, score {killed / max(total, 1):.1%}")
PY
