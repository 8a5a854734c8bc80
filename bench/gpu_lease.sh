#!/usr/bin/env bash
# One lent GPU, one call: experiments (the kernels' hardware counters, launch configurations of the
# fp32 backward, the LR stream's and discriminator's layouts on cuDNN), the GPU suite, then the
# test suite on the compiled kernels, inside a time budget, with every log and result copied to a
# folder that survives the machine.
#
#   BUDGET_SECONDS=560 OUT=/some/folder [SUITE_ARGS=--skip-tuning] bash bench/gpu_lease.sh
#
# SUITE_ARGS: the suite's options. A 15-minute lease fits the suite without autotuning and the
# training step ("--skip-tuning --skip-train-step": 166 s on the second H200 run), ncu and the
# fp32 backward sweep (about 100 s) and the compiled tests (198 s); with more time, "--tune-precisions
# fp32,bf16" also tunes the fp32 kernels (72 launch configurations each).
#
# Run from the repository root on a machine with a CUDA GPU, PyTorch and Triton (nothing is
# downloaded: the package is installed from this checkout without dependencies or an index).
# Order and budget: `bench/ncu_hr_stream.py`, a sweep of the fp32 backward's launch configurations
# and `bench/lr_d_variants.py --device cuda` first, into experiments.log (NCU_SECONDS, default 150,
# bounds ncu; the other two have their own limits, 180 and 120 s; NCU_SECONDS=0 leaves all three
# out), then `bench/gpu_suite.py` gets SUITE_SECONDS (default: 70% of the budget); its
# JSON is written after every step, so a suite stopped at its limit still leaves the finished
# steps. The tests then get what is left: first the files that run the compiled kernels
# ("triton" backend), then, time permitting, the rest; one line a test (-v), so that a run stopped
# at its limit still says which passed. At most 8 files in OUT (the device tool's limit). Exit
# status: the first failure's.
set -u -o pipefail
start=$SECONDS
budget=${BUDGET_SECONDS:-560}
out=${OUT:-bench/results/lease}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
left() { echo $((budget - (SECONDS - start))); }

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
    python3 -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
    nproc
} 2>&1 | tee "$out/env.txt"

# the package from this checkout: editable, offline; where the image's setuptools cannot build it,
# the same layout the wheel has (kernels/ and reference/ inside asapnet_triton) on PYTHONPATH
if ! python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >>"$out/env.txt" 2>&1; then
    site=$(mktemp -d)
    cp -r asapnet_triton "$site/" && cp -r kernels reference "$site/asapnet_triton/"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    echo "pip install failed (above); the package runs from $site" | tee -a "$out/env.txt"
fi

status=0
name=$(python3 -c "import sys; sys.path.insert(0, 'bench'); from common import machine_name; print(machine_name())")
ncu_seconds=${NCU_SECONDS:-150}
if [ "$ncu_seconds" -gt 0 ]; then
    timeout "$ncu_seconds" python3 bench/ncu_hr_stream.py 2>&1 | tee "$out/experiments.log" || status=$?
    cp bench/results/"$name"/ncu_hr_stream.csv "$out/" 2>/dev/null || echo "no ncu results written" | tee -a "$out/env.txt"
    # the fp32 backward kernel at a few launch configurations (1024x1024; labels: around the default,
    # 32-pixel blocks over 8 warps, which ran 1.32x faster than 16-pixel blocks on the second H200
    # run; float input: 16 against 32-pixel blocks, not yet measured), into a cache of its own so
    # that nothing after it uses what it finds; then the LR stream and the discriminator as trained
    # against channels-last, fp32 and bf16 autocast (which of them pays on the GPU's cuDNN)
    ASAPNET_TRITON_CACHE=$(mktemp -d)/sweep.json timeout 180 python3 - <<'EOF' 2>&1 | tee -a "$out/experiments.log"
import asapnet_triton as at
from asapnet_triton.kernels.launch_config import LaunchConfig as C

labels = [C(32, 1024, 8), C(32, 256, 8), C(32, 4096, 8), C(32, 1024, 8, 2), C(32, 1024, 16), C(16, 1024, 8)]
at.autotune(1024, 1024, cell_size=64, num_classes=35, precision="fp32", kernels=("backward",), configs=labels,
            repeats=10, device="cuda", progress=False)
at.autotune(1024, 1024, cell_size=64, in_channels=3, precision="fp32", kernels=("backward",),
            configs=[C(16, 1024, 8), C(32, 1024, 8)], repeats=10, device="cuda", progress=False)
EOF
    timeout 120 python3 bench/lr_d_variants.py --device cuda --skip-compile --out "$(mktemp -d)" 2>&1 |
        tee -a "$out/experiments.log"
fi
suite_seconds=${SUITE_SECONDS:-$((budget * 7 / 10))}
# shellcheck disable=SC2086  # SUITE_ARGS is split into options on purpose
timeout "$suite_seconds" python3 bench/gpu_suite.py ${SUITE_ARGS:-} 2>&1 | tee "$out/gpu_suite.log" || { rc=$?; [ $status -eq 0 ] && status=$rc; }
# the suite's own files only: a gpu_suite.log committed in that folder would replace this run's log
cp bench/results/"$name"/gpu_suite.json bench/results/"$name"/gpu_suite.png "$out/" 2>/dev/null ||
    echo "no gpu_suite results written" | tee -a "$out/env.txt"

# the test files that run the compiled kernels, then the rest
compiled=(tests/kernels tests/test_functional.py tests/test_autograd.py tests/test_opcheck.py tests/test_generator.py
          tests/test_autotune.py tests/test_errors.py tests/training/test_discriminator.py
          tests/training/test_checkpoint.py tests/bench/test_gpu_suite.py)
workers=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
run_tests() {  # log name, then pytest's arguments
    local log=$1
    shift
    local seconds
    seconds=$(left)
    if [ "$seconds" -lt 30 ]; then
        echo "no time left for $log" | tee -a "$out/env.txt"
        return 0
    fi
    ASAPNET_TEST_COMPILED=1 timeout "$seconds" python3 -m pytest -n "$workers" -v -p no:cacheprovider \
        "$@" 2>&1 | tee "$out/$log.log"
}
run_tests pytest_compiled "${compiled[@]}" || { rc=$?; [ $status -eq 0 ] && status=$rc; }
ignores=()
for path in "${compiled[@]}"; do ignores+=(--ignore="$path"); done
run_tests pytest_rest "${ignores[@]}" || { rc=$?; [ $status -eq 0 ] && status=$rc; }
echo "lease script done in $((SECONDS - start)) s, status $status" | tee -a "$out/env.txt"
exit $status
