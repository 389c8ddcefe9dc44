#!/usr/bin/env bash
# Mutation testing (mutmut), one module at a time against the tests of that module.
#
#   tools/mutation.sh                      # the default modules below
#   tools/mutation.sh tumor_runtime/model/ood.py # one module (import-name path)
#   SAMPLE=60 tools/mutation.sh MODULE     # a seeded random sample of 60 of its mutants (an estimate)
#
# mutmut derives module names from file paths, while this repository maps folders to import
# names (runtime/ -> tumor_runtime). So the packages are staged under their import names in
# .mutation/ (git-ignored); each module runs against the tests written for it, found by the
# mirror convention of tests/ (runtime/imaging/dicom.py -> tests/runtime/imaging/test_dicom.py and
# test_dicom_*.py), so that a run stays within minutes per module and no table goes stale.
# Each module stages in its own folder .mutation/<module>/ (so modules can run side by side);
# each kill rate is printed and appended to .mutation/scores.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

tests_for() {  # tumor_runtime/imaging/dicom.py -> its test files, by the mirror convention
  local module=$1 stage=${1%%/*} rest=${1#*/} folder
  case $stage in tumor_runtime) folder=runtime ;; tumor_export) folder=export ;; tumor_train) folder=train ;; esac
  local dir name base
  dir=$(dirname "$rest"); name=$(basename "$rest" .py); base=tests/$folder
  [ "$dir" != . ] && base=$base/$dir
  compgen -G "$base/test_${name}.py" || true
  compgen -G "$base/test_${name}_*.py" || true
}
# The two torchrun tests run the installed package in subprocesses, where no mutant is switched on: they
# cannot kill one, and they cost a minute per mutant.
declare -A EXTRA_ARGS=(
  [tumor_train/distributed.py]="--deselect tests/train/test_distributed.py::test_two_process_gloo_run_matches_one_process --deselect tests/train/test_distributed.py::test_distributed_resume_and_out_required"
)
BROWSER_TEST=tests/runtime/serving/test_app.py::test_browser_uploads_a_slice_and_reads_the_label  # never mutated against
# Every module of the three stages that has tests of its own.
mapfile -t ALL < <(find runtime export train -name '*.py' ! -name '__*' | sort |
                   sed -e 's#^runtime/#tumor_runtime/#' -e 's#^export/#tumor_export/#' -e 's#^train/#tumor_train/#')
DEFAULT=()
for module in "${ALL[@]}"; do [ -n "$(tests_for "$module")" ] && DEFAULT+=("$module"); done
modules=("${@:-${DEFAULT[@]}}")

mkdir -p .mutation
for module in "${modules[@]}"; do
  selection="$(tests_for "$module" | tr '\n' ' ')${EXTRA_ARGS[$module]:-}"
  [ -n "${selection// }" ] || { echo "no tests for $module: by the mirror convention they would be in $(dirname "${module/tumor_/tests/}")/test_$(basename "$module")" >&2; exit 2; }
  quoted=$(printf '"%s", ' $selection)
  stage=.mutation/$(echo "${module%.py}" | tr / _)
  rm -rf "$stage"
  mkdir -p "$stage"
  cp -r runtime "$stage/tumor_runtime"
  cp -r export "$stage/tumor_export"
  cp -r train "$stage/tumor_train"
  cp -r artifacts tests benchmarks "$stage/"
  (
    cd "$stage"
    cat > pyproject.toml <<TOML
[tool.mutmut]
source_paths = ["$module"]
also_copy = ["tumor_runtime", "tumor_export", "tumor_train", "artifacts", "tests", "benchmarks"]
pytest_add_cli_args_test_selection = [${quoted%, }]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x", "--deselect", "$BROWSER_TEST"]  # minutes of Chromium
process_isolation = "forkserver"  # torch and onnxruntime are not fork-safe once used
# A mutant is a timeout (counted as killed) past 10x (its tests' clean time + 6 s) of wall time. mutmut times only a
# test's call, not its fixtures: without the 6 s, a test whose fixture exports a model "timed out" at once.
timeout_multiplier = 10.0
timeout_constant = 6.0

[tool.pytest.ini_options]
testpaths = ["tests"]
markers = ["faults: bad-input and fault cases"]
TOML
    names=()
    if [ -n "${SAMPLE:-}" ]; then  # SAMPLE=N: N mutants drawn at random (seeded): an estimate, with its interval
      python -m mutmut run --max-children 1 "no-such-mutant" > run-0.log 2>&1 || true  # generate only
      python -m mutmut results --all true > all.txt || true
      mapfile -t names < <(python -c "import random, sys; names = [l.split(':')[0].strip() for l in open('all.txt')
if ':' in l]; random.seed(0); print(*random.sample(names, min(int(sys.argv[1]), len(names))), sep='\n')" "$SAMPLE")
    fi
    # A second pass picks up what the first left "not checked" (it stops early when a clean run of the
    # selection fails, e.g. a signal test starved of CPU by a parallel job); mutmut keeps finished results.
    for pass in 1 2; do
      python -m mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "${names[@]}" > "run-$pass.log" 2>&1 || true
      python -m mutmut results --all true > results.txt || true
      if [ ${#names[@]} -gt 0 ]; then grep -F -f <(printf '%s:\n' "${names[@]}") results.txt > sampled.txt || true
                                       mv sampled.txt results.txt; fi
      grep -q "not checked" results.txt || break
    done
    # mutmut runs a mutant only against the tests it saw calling the mutated function, and it credits the calls
    # of a module-scoped fixture to the first test that used it: a later test of the same fixture never meets
    # the mutant. So each survivor runs once more against the module's whole selection (the mutant switched on
    # by name, as mutmut does); one that now fails or runs past 10x the clean time is killed by that selection.
    : > rechecked.txt
    deselect=(--deselect "$BROWSER_TEST")
    started=$(date +%s)
    if [ "${RECHECK:-1}" = 1 ] && grep -q ": survived" results.txt && (cd mutants && MUTANT_UNDER_TEST= \
         timeout 3600 python -m pytest -x -q -p no:cacheprovider $selection "${deselect[@]}" > ../clean.log 2>&1); then
      limit=$(( ($(date +%s) - started + 6) * 10 ))
      for name in $(grep ": survived" results.txt | cut -d: -f1); do
        (cd mutants && MUTANT_UNDER_TEST=$name timeout $limit python -m pytest -x -q -p no:cacheprovider $selection \
           "${deselect[@]}" > /dev/null 2>&1) || echo "$name" >> rechecked.txt
      done
    fi
    python - "$module" results.txt "${SAMPLE:-}" <<'PY' | tee -a ../scores.txt
import collections, math, sys
rechecked = set(open("rechecked.txt").read().split())
counts = collections.Counter("killed by the whole selection" if line.split(":")[0].strip() in rechecked
                             else line.rsplit(":", 1)[-1].strip() for line in open(sys.argv[2]) if ":" in line)
total = sum(counts.values())
killed = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("killed by the whole selection", 0)
share = killed / max(total, 1)
z, n = 1.96, max(total, 1)  # Wilson's 95 % interval for a share measured on a sample
centre, half = (share + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
sampled = f" (random sample; 95 % interval {centre - half:.1%}-{centre + half:.1%})" if sys.argv[3] else ""
print(f"{sys.argv[1]}: mutants {total}, killed {killed}, score {share:.1%}{sampled} {dict(counts)}")
PY
  )
done
