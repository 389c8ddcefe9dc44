#!/usr/bin/env bash
# Mutation testing (mutmut), one module at a time against the tests of that module.
#
#   tools/mutation.sh                      # the default modules below
#   tools/mutation.sh tumor_runtime/ood.py # one module (import-name path)
#   SAMPLE=60 tools/mutation.sh MODULE     # a seeded random sample of 60 of its mutants (an estimate)
#
# mutmut derives module names from file paths, while this repository maps folders to import
# names (runtime/ -> tumor_runtime). So the packages are staged under their import names in
# .mutation/ (git-ignored); each module runs with its own test selection (below), so that a
# module's mutants meet the tests written for it and a run stays within minutes per module.
# Each module stages in its own folder .mutation/<module>/ (so modules can run side by side);
# each kill rate is printed and appended to .mutation/scores.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

R=tests/runtime; E=tests/export; T=tests/train
declare -A TESTS=(
  [tumor_runtime/backends.py]="$R/test_backends.py"
  [tumor_runtime/batching.py]="$R/test_batching.py"
  [tumor_runtime/classifier.py]="$R/test_classifier.py $R/test_model.py $R/test_silent_wrong_answers.py $R/test_decoding.py"
  [tumor_runtime/contract.py]="$R/test_contract.py"
  [tumor_runtime/decoding.py]="$R/test_decoding.py"
  [tumor_runtime/dicom.py]="$R/test_dicom.py $R/test_dicom_pixels.py"
  [tumor_runtime/errors.py]="$R/test_cli_faults.py $R/test_cli_contract.py"
  [tumor_runtime/evaluation.py]="$R/test_evaluation.py $R/test_outputs_behaviour.py"
  [tumor_runtime/fileio.py]="$R/test_fileio.py $R/test_fileio_signals.py"
  [tumor_runtime/heatmap.py]="$R/test_heatmap.py"
  [tumor_runtime/inputs.py]="$R/test_inputs.py $R/test_silent_wrong_answers.py $R/test_cli_faults.py"
  [tumor_runtime/metrics.py]="$R/test_metrics.py"
  [tumor_runtime/model.py]="$R/test_model.py $R/test_cli_contract.py $R/test_cli_faults.py $R/test_ood.py"
  [tumor_runtime/ood.py]="$R/test_ood.py"
  [tumor_runtime/output.py]="$R/test_output.py $R/test_outputs_behaviour.py"
  [tumor_runtime/preprocess.py]="$R/test_preprocess.py $R/test_brain_crop.py"
  [tumor_runtime/ray_batch.py]="$R/test_ray_batch.py"
  [tumor_runtime/server.py]="$R/test_server.py"
  [tumor_runtime/tumor.py]="$R/test_tumor.py"
  [tumor_runtime/validate.py]="$R/test_validate.py"
  [tumor_export/calibration.py]="$E/test_calibration.py"
  [tumor_export/gate.py]="$E/test_gate.py"
  [tumor_export/metadata.py]="$E/test_metadata.py"
  [tumor_export/onnx_export.py]="$E/test_onnx_export.py"
  [tumor_export/ood_fit.py]="$E/test_ood_fit.py"
  [tumor_export/pipeline.py]="$E/test_pipeline.py $E/test_cli_faults.py"
  [tumor_export/static_int8.py]="$E/test_static_int8.py"
  [tumor_train/checkpoint.py]="$T/test_checkpoint.py"
  [tumor_train/config.py]="$T/test_config.py"
  [tumor_train/cv.py]="$T/test_cv.py"
  [tumor_train/data.py]="$T/test_data.py"
  [tumor_train/dedup.py]="$T/test_dedup.py"
  [tumor_train/distill.py]="$T/test_distill.py"
  # The two torchrun tests run the installed package in subprocesses, where no mutant is switched on: they
  # cannot kill one, and they cost a minute per mutant.
  [tumor_train/distributed.py]="$T/test_distributed.py --deselect $T/test_distributed.py::test_two_process_gloo_run_matches_one_process --deselect $T/test_distributed.py::test_distributed_resume_and_out_required"
  [tumor_train/dynamic_int8.py]="$T/test_checkpoint.py"
  [tumor_train/engine.py]="$T/test_engine.py"
  [tumor_train/models.py]="$T/test_models.py"
  [tumor_train/report.py]="$T/test_report.py"
  [tumor_train/trainer.py]="$T/test_trainer.py"
)
BROWSER_TEST=tests/runtime/test_server.py::test_browser_uploads_a_slice_and_reads_the_label  # never mutated against
# Every module that is not a command-line front end (cli.py, serve_cli.py, cli_common.py).
DEFAULT=($(printf '%s\n' "${!TESTS[@]}" | sort))
modules=("${@:-${DEFAULT[@]}}")

mkdir -p .mutation
for module in "${modules[@]}"; do
  selection=${TESTS[$module]:?"no test selection for $module: add it to TESTS in tools/mutation.sh"}
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
