#!/usr/bin/env bash
# Verify histofast on a GPU machine in one command, from the repository root, in at most 6 minutes:
#
#     bash benchmarks/gpu/verify.sh            # output in $OUT (default ./.gpu-verify)
#     bash benchmarks/gpu/verify.sh --plan     # the caps and the budget, nothing run
#
# Steps in this order, each under timeout(1) at its cap in seconds (TERM, KILL 3 s later) and never past the budget
# less 10 s kept for the summary; a failing step never stops the next; each leaves its file as it ends:
#   wheels   25  .whl/*.whl into /tmp/site, on PYTHONPATH, nvidia.* kept a namespace (steps.py wheels; needs .whl/)
#   build    80  the extension for this GPU's architecture only, every core, no internet (steps.py build)
#   info     15  nvidia-smi, GPU, driver, CUDA and package versions -> build_info.json (steps.py info)
#   slide    20  the benchmark's 16384² generated slide, cached (gpu_bench.py --slides-only)
#   tests    80  pytest -m gpu over tests/, 30 s a test where pytest-timeout is installed -> tests.xml
#   kernels  25  pytest benchmarks/test_kernels.py -m gpu -> kernels.json
#   bench    80  benchmarks/gpu/gpu_bench.py -> gpu_bench.json, rewritten as each part ends
# then summarize.py writes summary.json and prints one line last. log.txt holds everything.
# Budget: VERIFY_BUDGET_S, default 360 s; the caps, each with its 3 s to KILL, and the summary's 10 s add up to 356 s.
# Knobs: VERIFY_BIG=1 (also the 65536x32768 slide: slide 140 s, bench 200 s, default budget 600 s),
# VERIFY_BENCH_ARGS (more gpu_bench.py options, given to the slide step too), PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
STARTED=$(date +%s)

# The caps in running order, the KILL grace and the summary's reserve: set here only (tests/test_gpu_verify.py adds
# them up against the default budget and checks the table above).
CAPS="wheels=25 build=80 info=15 slide=20 tests=80 kernels=25 bench=80"
GRACE=3
RESERVE=10
DEFAULT_BUDGET=360
if [[ "${VERIFY_BIG:-0}" == 1 ]]; then
    CAPS+=" slide=140 bench=200"
    DEFAULT_BUDGET=600
fi
BUDGET=${VERIFY_BUDGET_S:-$DEFAULT_BUDGET}
declare -A CAP
ORDER=()
for kv in $CAPS; do
    [[ -v "CAP[${kv%=*}]" ]] || ORDER+=("${kv%=*}")
    CAP[${kv%=*}]=${kv#*=}
done
TOTAL=$RESERVE
for name in "${ORDER[@]}"; do TOTAL=$((TOTAL + CAP[$name] + GRACE)); done
PLAN="budget $BUDGET s; caps$(for name in "${ORDER[@]}"; do printf ' %s=%s' "$name" "${CAP[$name]}"; done); kill grace \
$GRACE s each; summary reserve $RESERVE s; total $TOTAL s"
((TOTAL > BUDGET)) && PLAN+=" (over the budget: the last steps get less than their caps)"
if [[ "${1:-}" == --plan ]]; then
    echo "$PLAN"
    exit 0
fi

if [[ -z "${OUT:-}" ]]; then
    OUT=./.gpu-verify
    mkdir -p "$OUT" && echo '*' > "$OUT/.gitignore"
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
rm -f "$OUT"/{log.txt,steps.tsv,build_info.json,tests.xml,kernels.json,gpu_bench.json,summary.json}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee -a "$OUT/log.txt") 2>&1
TEE=$!

# step NAME COMMAND...: run COMMAND under timeout at CAP[NAME] (its whole process group, KILL GRACE s after TERM),
# never past the budget less RESERVE; append "name rc wall_ms limit_s note" to steps.tsv.
step() {
    local name=$1 left limit start rc ms
    shift
    left=$((BUDGET - SECONDS - RESERVE - GRACE))
    limit=$((CAP[$name] < left ? CAP[$name] : left))
    if ((limit < 5)); then
        echo "=== step $name: not run, $((left + GRACE))s left of the ${BUDGET}s budget"
        printf '%s\tskip\t0\t0\tout of time (budget %ss)\n' "$name" "$BUDGET" >>"$OUT/steps.tsv"
        return
    fi
    echo "=== step $name (limit ${limit}s): $*"
    start=$(date +%s%N)
    timeout -k "$GRACE" "$limit" "$@" </dev/null
    rc=$?
    ms=$((($(date +%s%N) - start) / 1000000))
    echo "=== step $name: exit $rc after $((ms / 1000)).$((ms % 1000 / 100)) s"
    printf '%s\t%s\t%s\t%s\t\n' "$name" "$rc" "$ms" "$limit" >>"$OUT/steps.tsv"
}

echo "histofast GPU verification: $(date -u +%FT%TZ), $(nproc) cores, output $OUT, $PLAN"
if compgen -G ".whl/*.whl" >/dev/null; then
    step wheels "$PY" benchmarks/gpu/steps.py wheels --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
else
    echo "=== step wheels: not run, no .whl/ folder"
    printf 'wheels\tskip\t0\t0\tno .whl/ folder: OpenSlide, imagecodecs, nvImageCodec only if already installed\n' \
        >>"$OUT/steps.tsv"
fi
step build "$PY" benchmarks/gpu/steps.py build
step info "$PY" benchmarks/gpu/steps.py info --json "$OUT/build_info.json"
BENCH_ARGS=(--recipe-tiles 64)
[[ "${VERIFY_BIG:-0}" == 1 ]] && BENCH_ARGS+=(--big)
read -r -a EXTRA <<<"${VERIFY_BENCH_ARGS:-}"
BENCH_ARGS+=("${EXTRA[@]}")
step slide "$PY" benchmarks/gpu/gpu_bench.py --slides-only "${BENCH_ARGS[@]}"
PER_TEST=()
"$PY" -c "import pytest_timeout" 2>/dev/null && PER_TEST=(--timeout=30)
step tests "$PY" -m pytest tests -m gpu -v -rfEs -p no:cacheprovider --continue-on-collection-errors "${PER_TEST[@]}" \
    --junitxml="$OUT/tests.xml"
step kernels "$PY" -m pytest benchmarks/test_kernels.py -m gpu -v -rfEs -p no:cacheprovider "${PER_TEST[@]}" \
    --benchmark-json="$OUT/kernels.json"
step bench "$PY" benchmarks/gpu/gpu_bench.py --json "$OUT/gpu_bench.json" "${BENCH_ARGS[@]}"

timeout -k 2 $((RESERVE - 2)) "$PY" benchmarks/gpu/summarize.py "$OUT" --started "$STARTED" --budget "$BUDGET" \
    </dev/null
rc=$?
if ((rc > 1)); then
    echo "gpu-verify PROBLEMS | summarize.py failed (exit $rc) | see $OUT/log.txt and $OUT/steps.tsv"
fi
exec >&- 2>&-
wait "$TEE" 2>/dev/null
exit "$rc"
