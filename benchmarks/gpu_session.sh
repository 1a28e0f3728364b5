#!/usr/bin/env bash
# Everything lemon checks and measures on a lent GPU, in one call of the device tool:
#
#     run(command="bash benchmarks/gpu_session.sh", timeout_s=600)
#
# A lent machine comes for minutes (its start counts), so this is prepared here and run there
# once: build the extension (with its CUDA executor), run the test files that have GPU cases
# (Triton and CUDA executors against the reference on CUDA tensors, whole models, `--device
# cuda` checkpoints), then the benchmarks (bench_kernels.py: per tensor and the 8B model;
# bench_checkpoint.py --device cuda). Each step has a time limit and the whole a deadline
# (BUDGET_S, default 570 s), so one slow step leaves the later ones what is left. Logs and the
# benchmarks' JSON and charts go under $OUT (the device tool brings that folder back); the last
# lines printed are a summary, one line a step, since the reply carries only the output's end.
#
# On a machine without a CUDA GPU it stops after recording the environment (exit 2), unless
# REHEARSE=1: then every step runs here, on the CPU (the last benchmark with --device cpu), which
# checks the script itself before a GPU's minutes are spent on it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/lemon-gpu-session}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-570} ))
SUMMARY=()

step() {  # step NAME LIMIT_S COMMAND...: run it with its output in $OUT/NAME.log, within the deadline
    local name=$1 limit=$2 left start rc
    shift 2
    left=$(( DEADLINE - $(date +%s) ))
    if (( left < 20 )); then
        SUMMARY+=("$(printf '%-12s not run: the deadline had come' "$name")")
        return 124
    fi
    (( limit > left )) && limit=$left
    start=$(date +%s)
    echo "== $name (limit ${limit} s): $*" | tee -a "$OUT/steps.log"
    timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    SUMMARY+=("$(printf '%-12s exit %-3s %4s s  %s' "$name" "$rc" "$(( $(date +%s) - start ))" \
        "$(grep -v -e '^\s*$' -e '^WARNING: Running pip as' "$OUT/$name.log" | tail -n 1 | cut -c1-150)")")
    return $rc
}

summary() {
    echo
    echo "== summary (logs under $OUT)"
    printf '%s\n' "${SUMMARY[@]}"
}

step env 60 bash -c "nvidia-smi; $PY -c 'import sys, torch, triton; print(sys.version); \
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__); \
print(\"gpu\", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'; nvcc --version; nproc; df -h /tmp"
DEVICE=cuda
if ! $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    if [[ "${REHEARSE:-0}" != 1 ]]; then
        SUMMARY+=("no CUDA GPU here: nothing to check (see $OUT/env.log; REHEARSE=1 runs the steps anyway)")
        summary
        exit 2
    fi
    DEVICE=cpu
fi
XDIST=()
$PY -c 'import xdist' 2>/dev/null && XDIST=(-n 8)

# the extension, built against the torch there (CUDA executor included; its arch from the device)
step build 240 env MAX_JOBS="$(nproc)" $PY -m pip install --no-build-isolation --no-deps -v -e . \
    && step backends 60 $PY -c 'import lemon; from lemon import native
print("build_info", native.build_info())
print("available_backends", lemon.available_backends())'

# the test files with GPU cases; xdist spreads the Triton compiles over the cores
step tests 180 $PY -m pytest -q --maxfail=10 -p no:cacheprovider "${XDIST[@]}" -rfEs --junitxml="$OUT/tests.xml" \
    tests/test_executors.py tests/test_native.py tests/test_checkpoint.py tests/test_api.py

step kernels 180 $PY benchmarks/bench_kernels.py --out "$OUT"
WORK=$(mktemp -d /tmp/lemon-gpu-session-ckpt.XXXX)  # its ~11 GB of checkpoints: not under $OUT, which travels back
step checkpoint 150 $PY benchmarks/bench_checkpoint.py --runs 1 --no-mergekit --drop-caches no \
    --device "$DEVICE" --workdir "$WORK/run" --out "$OUT"
rm -rf "$WORK"  # removed here too: a step cut off by its time limit cannot clean up after itself

for name in kernels checkpoint; do  # the benchmarks' own tables, before the summary
    [[ -f "$OUT/$name.log" ]] && { echo; echo "== $name"; tail -n 30 "$OUT/$name.log" | cut -c1-220; }
done
summary
