#!/usr/bin/env bash
# Verify histofast on a GPU machine in one command, from the repository root:
#
#     bash benchmarks/gpu/verify.sh            # output in $OUT (default ./.gpu-verify)
#
# Steps, each under timeout(1) and recorded (a failing step never stops the next):
#   wheels   install the wheels carried in .whl/ into /tmp/site (OpenSlide, imagecodecs, nvImageCodec, ...)
#   build    the extension for this GPU's architecture only, every core, no internet (steps.py build)
#   info     GPU, driver, build and versions -> build_info.json (steps.py info)
#   tests    pytest -m gpu over tests/ -> tests.xml
#   kernels  pytest benchmarks/test_kernels.py -m gpu -> kernels.json
#   bench    benchmarks/gpu/gpu_bench.py -> gpu_bench.json
# then summarize.py writes summary.json and prints one line last. log.txt holds everything.
# Knobs: VERIFY_BUDGET_S (whole run, default 470 s), VERIFY_BIG=1 (also the 65536x32768 slide: raise the budget),
# VERIFY_BENCH_ARGS (more gpu_bench.py options), PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
STARTED=$(date +%s)
if [[ -z "${OUT:-}" ]]; then
    OUT=./.gpu-verify
    mkdir -p "$OUT" && echo '*' > "$OUT/.gitignore"
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
rm -f "$OUT"/{log.txt,steps.tsv,build_info.json,tests.xml,kernels.json,gpu_bench.json,summary.json}
PY=${PYTHON:-python3}
BUDGET=${VERIFY_BUDGET_S:-470}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee -a "$OUT/log.txt") 2>&1
TEE=$!

# step NAME LIMIT_S COMMAND...: run COMMAND under timeout (its whole process group, KILL 10 s after TERM), never
# past the budget less 20 s kept for the summary; append "name rc wall_ms limit_s note" to steps.tsv.
step() {
    local name=$1 cap=$2 left limit start rc ms
    shift 2
    left=$((BUDGET - SECONDS - 20))
    limit=$((cap < left ? cap : left))
    if ((limit < 5)); then
        echo "=== step $name: not run, ${left}s left of the ${BUDGET}s budget"
        printf '%s\tskip\t0\t0\tout of time (budget %ss)\n' "$name" "$BUDGET" >>"$OUT/steps.tsv"
        return
    fi
    echo "=== step $name (limit ${limit}s): $*"
    start=$(date +%s%N)
    timeout -k 10 "$limit" "$@" </dev/null
    rc=$?
    ms=$((($(date +%s%N) - start) / 1000000))
    echo "=== step $name: exit $rc after $((ms / 1000)).$((ms % 1000 / 100)) s"
    printf '%s\t%s\t%s\t%s\t\n' "$name" "$rc" "$ms" "$limit" >>"$OUT/steps.tsv"
}

echo "histofast GPU verification: $(date -u +%FT%TZ), $(nproc) cores, output $OUT, budget ${BUDGET}s"
if compgen -G ".whl/*.whl" >/dev/null; then
    step wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
else
    echo "=== step wheels: not run, no .whl/ folder"
    printf 'wheels\tskip\t0\t0\tno .whl/ folder: OpenSlide, imagecodecs, nvImageCodec only if already installed\n' \
        >>"$OUT/steps.tsv"
fi
timeout 20 nvidia-smi || echo "nvidia-smi: not available"
step build 150 "$PY" benchmarks/gpu/steps.py build
step info 30 "$PY" benchmarks/gpu/steps.py info --json "$OUT/build_info.json"
PER_TEST=()
"$PY" -c "import pytest_timeout" 2>/dev/null && PER_TEST=(--timeout=90)
step tests 150 "$PY" -m pytest tests -m gpu -v -rfEs -p no:cacheprovider "${PER_TEST[@]}" \
    --junitxml="$OUT/tests.xml"
step kernels 60 "$PY" -m pytest benchmarks/test_kernels.py -m gpu -v -rfEs -p no:cacheprovider "${PER_TEST[@]}" \
    --benchmark-json="$OUT/kernels.json"
BENCH_ARGS=()
BENCH_LIMIT=180
[[ "${VERIFY_BIG:-0}" == 1 ]] && BENCH_ARGS+=(--big) && BENCH_LIMIT=420  # give it VERIFY_BUDGET_S too
read -r -a EXTRA <<<"${VERIFY_BENCH_ARGS:-}"
step bench "$BENCH_LIMIT" "$PY" benchmarks/gpu/gpu_bench.py --json "$OUT/gpu_bench.json" "${BENCH_ARGS[@]}" "${EXTRA[@]}"

timeout -k 5 30 "$PY" benchmarks/gpu/summarize.py "$OUT" --started "$STARTED" </dev/null
rc=$?
if ((rc > 1)); then
    echo "gpu-verify PROBLEMS | summarize.py failed (exit $rc) | see $OUT/log.txt and $OUT/steps.tsv"
fi
exec >&- 2>&-
wait "$TEE" 2>/dev/null
exit "$rc"
