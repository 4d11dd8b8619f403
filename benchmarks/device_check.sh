#!/usr/bin/env bash
# The GPU checks, prepared to fit one device lease (15 minutes of device time in all, machine
# start included). Run on the GPU machine from the repository root, one part per call:
#
#   bash benchmarks/device_check.sh tests        # ~3 min: attention-path, kernel and parity tests
#                                                # on the GPU (the Pallas kernels compiled, not
#                                                # interpreted), against transformers on its CPU
#   bash benchmarks/device_check.sh attention    # ~1 min: every attention path at Llama-1B's heads,
#                                                # timed, each compared with the dense path
#   bash benchmarks/device_check.sh throughput   # ~6 min: the throughput harness on a random
#                                                # Llama-3.2-1B-shaped model: jaxmap (default and
#                                                # Pallas kernels) against the batched transformers
#                                                # loop and the paper's batch-1 loop, bfloat16
#
# Logs and results go to $OUT (the folder the device tool sends back), else ./device-check; copy
# the results into benchmarks/results/ with the device named. Nothing is downloaded: jaxmap is
# installed from this checkout over the machine's own packages (pip --no-index --no-deps).
# DEVICE_CHECK_MODEL, DEVICE_CHECK_TEXTS and DEVICE_CHECK_MATMUL override the throughput model,
# text count and peak matmul size (e.g. random:tiny, 16 and 4096 to try the script on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python=${PYTHON:-python3}
part=${1:-}

setup() {
    {
        nvidia-smi 2>&1 || echo "no nvidia-smi"
        $python -c "import jax, torch, transformers; print('jax', jax.__version__, jax.devices()); print('torch', torch.__version__, 'cuda', torch.cuda.is_available()); print('transformers', transformers.__version__)"
    } | tee "$out/environment.txt"
    if ! $python -c "import jaxmap.kernels" 2>/dev/null; then
        $python -m pip install -q --no-deps --no-index --no-build-isolation -e . \
            || $python -m pip install -q --no-deps --no-index --no-build-isolation . \
            || { echo "device_check: could not install jaxmap from this checkout" >&2; exit 1; }
    fi
}

case "$part" in
    tests)
        setup
        timeout 330 $python -m pytest -q -p no:cacheprovider \
            tests/test_attention_paths.py tests/test_pallas_kernels.py tests/test_kernels.py \
            tests/test_parity.py 2>&1 | tee "$out/tests.log"
        ;;
    attention)
        setup
        $python benchmarks/bench_attention.py --paths dense,blockwise,xla_fused,pallas \
            --heads 8,4,64 --dtype bfloat16 --budget 16384 --lengths 128,256,512,1024,2048 \
            --rounds 5 --out "$out/attention.md" 2>&1 | tee "$out/attention.log"
        ;;
    throughput)
        setup
        $python benchmarks/throughput.py --model "${DEVICE_CHECK_MODEL:-random:llama-1b}" \
            --texts-count "${DEVICE_CHECK_TEXTS:-1500}" --paper-texts 32 \
            --contenders jaxmap-bf16,jaxmap-bf16-pallas,hf-batched-bf16,paper-loop-bf16 \
            --hf-batch-tokens 16384 --rounds 2 --matmul-size "${DEVICE_CHECK_MATMUL:-8192}" --profile \
            --out-dir "$out" --tag device-check 2>&1 | tee "$out/throughput.log"
        ;;
    *)
        echo "usage: bash benchmarks/device_check.sh tests|attention|throughput" >&2
        exit 2
        ;;
esac
