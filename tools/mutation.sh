#!/usr/bin/env bash
# Mutation testing (mutmut), one module at a time against the tests of that module.
#
#   tools/mutation.sh                      # the default modules below
#   tools/mutation.sh tumor_runtime/ood.py # one module (import-name path)
#
# mutmut derives module names from file paths, while this repository maps folders to import
# names (runtime/ -> tumor_runtime). So the packages are staged under their import names in
# .mutation/ (git-ignored); each module runs with its own test selection (below), so that a
# module's mutants meet the tests written for it and a run stays within minutes per module.
# Prints each module's kill rate and writes .mutation/scores.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A TESTS=(
  [tumor_runtime/metrics.py]="tests/runtime/test_metrics.py"
  [tumor_runtime/tumor.py]="tests/runtime/test_tumor.py"
  [tumor_runtime/preprocess.py]="tests/runtime/test_preprocess.py tests/runtime/test_brain_crop.py"
  [tumor_runtime/output.py]="tests/runtime/test_outputs_behaviour.py"
  [tumor_runtime/evaluation.py]="tests/runtime/test_evaluation.py"
  [tumor_runtime/ood.py]="tests/runtime/test_ood.py"
  [tumor_runtime/heatmap.py]="tests/runtime/test_heatmap.py"
  [tumor_runtime/dicom.py]="tests/runtime/test_dicom.py tests/runtime/test_dicom_pixels.py"
  [tumor_runtime/inputs.py]="tests/runtime/test_inputs_round3.py tests/runtime/test_cli_faults.py"
  [tumor_export/gate.py]="tests/export/test_gate.py"
  [tumor_train/dedup.py]="tests/train/test_dedup.py"
  [tumor_train/engine.py]="tests/train/test_engine.py"
)
DEFAULT=(tumor_runtime/metrics.py tumor_runtime/tumor.py tumor_runtime/preprocess.py tumor_export/gate.py
         tumor_train/dedup.py tumor_train/engine.py)
modules=("${@:-${DEFAULT[@]}}")

stage=.mutation
rm -rf "$stage"
mkdir -p "$stage"
cp -r runtime "$stage/tumor_runtime"
cp -r export "$stage/tumor_export"
cp -r train "$stage/tumor_train"
cp -r artifacts "$stage/artifacts"
cp -r tests "$stage/tests"
: > "$stage/scores.txt"
for module in "${modules[@]}"; do
  selection=${TESTS[$module]:?"no test selection for $module: add it to TESTS in tools/mutation.sh"}
  quoted=$(printf '"%s", ' $selection)
  (
    cd "$stage"
    rm -rf mutants
    cat > pyproject.toml <<TOML
[tool.mutmut]
source_paths = ["$module"]
also_copy = ["tumor_runtime", "tumor_export", "tumor_train", "artifacts", "tests"]
pytest_add_cli_args_test_selection = [${quoted%, }]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
process_isolation = "forkserver"  # torch and onnxruntime are not fork-safe once used

[tool.pytest.ini_options]
testpaths = ["tests"]
markers = ["faults: bad-input and fault cases"]
TOML
    python -m mutmut run --max-children "${MUTMUT_CHILDREN:-2}" >/dev/null 2>&1 || true
    python -m mutmut results --all true > "results-$(basename "$module" .py).txt" || true
    python - "$module" "results-$(basename "$module" .py).txt" <<'PY' | tee -a scores.txt
import collections, sys
counts = collections.Counter(line.rsplit(":", 1)[-1].strip() for line in open(sys.argv[2]) if ":" in line)
total = sum(counts.values())
killed = counts.get("killed", 0) + counts.get("timeout", 0)
print(f"{sys.argv[1]}: mutants {total}, killed {killed}, score {killed / max(total, 1):.1%} {dict(counts)}")
PY
  )
done
