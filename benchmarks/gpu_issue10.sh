#!/usr/bin/env bash
# Issue 10's GPU measurements, side by side with the official code, in two calls of the device machine (each inside
# one call's 10-minute limit, both together about 10-12 minutes of a session's 15; estimates from the 2026-11-27 H200
# figures, not timed as a whole; every benchmark has its own time limit below):
#
#   benchmarks/gpu_issue10.sh train    # ~4-7 min: training step at batch 256 (speed, peak memory, checkpointing
#                                      #   options for 80 GB) and 32; the data loader on the machine's cores;
#                                      #   attention kernels at head dim 72 (bench_attention, under a minute)
#   benchmarks/gpu_issue10.sh sample   # ~5-8 min: SDE 250 and Heun 50 at batch 64: official, fast, fast with
#                                      #   compiled blocks, fast with the whole model as CUDA graphs
#   benchmarks/gpu_issue10.sh tiny     # every command above in its CPU tiny mode: try it here first (~2 min)
#
# Run from the repository root. The device machine has torch but neither diffusers nor datasets and no network:
# carry `.whl` (wheels, made once here with the command below) and `.official-repa` (the official code at the
# commit the benchmarks were written against):
#
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl diffusers==0.42.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#   git clone https://github.com/sihyun-yu/REPA /tmp/official-repa && git -C /tmp/official-repa checkout 67f7145
#   mkdir -p .official-repa && git -C /tmp/official-repa archive 67f7145 | tar -x -C .official-repa
#   git -C /tmp/official-repa rev-parse 67f7145 > .official-repa/COMMIT   # the export has no .git: the JSON reads this
#
# Each benchmark's table and JSON line go to $OUT/<name>.log (OUT defaults to outputs/gpu_issue10), with the
# versions and the card in $OUT/env.txt. A benchmark that fails or runs out of time is logged and the next one runs.
set -uo pipefail

phase=${1:-}
case "$phase" in
    train | sample | tiny) ;;
    *)
        echo "usage: benchmarks/gpu_issue10.sh train|sample|tiny" >&2
        exit 2
        ;;
esac
official=${OFFICIAL_DIR:-.official-repa}
if [ ! -f "$official/samplers.py" ]; then
    echo "No official code at $official: see the top of this script (carry .official-repa, or set OFFICIAL_DIR)." >&2
    exit 2
fi
out=${OUT:-outputs/gpu_issue10}
mkdir -p "$out"
python=${PYTHON:-python3}
if ! "$python" -c "import diffusers, datasets" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "diffusers/datasets are missing and there is no .whl folder to install them from (see above)." >&2
        exit 2
    fi
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=src:benchmarks${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

{
    date -u +"%Y-%m-%d %H:%M UTC"
    git log -1 --format="commit %h %s" 2>/dev/null || true
    "$python" -c "import platform, torch, diffusers, transformers, datasets, pyarrow
print('python', platform.python_version(), '| torch', torch.__version__, '| diffusers', diffusers.__version__,
      '| transformers', transformers.__version__, '| datasets', datasets.__version__, '| pyarrow', pyarrow.__version__)
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', '| cpus', __import__('os').cpu_count())"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} 2>&1 | tee "$out/env.txt"

# run NAME SECONDS SCRIPT ARGS...: one benchmark under a time limit, its output in $out/NAME.log.
run() {
    local name=$1 seconds=$2
    shift 2
    echo "== $name: $*" | tee "$out/$name.log"
    local start=$SECONDS
    timeout "$seconds" "$python" "$@" 2>&1 | tee -a "$out/$name.log"
    local status=${PIPESTATUS[0]}
    echo "== $name: exit $status after $((SECONDS - start)) s" | tee -a "$out/$name.log"
}

case "$phase" in
    train)
        run train_b256 200 benchmarks/bench_train.py --official_dir "$official" --batch_size 256 \
            --variants eager,fused_adamw,compiled,checkpointed,compiled_checkpointed
        run train_b32 90 benchmarks/bench_train.py --official_dir "$official" --batch_size 32 \
            --variants fused_adamw,compiled
        run data 120 benchmarks/bench_data.py --official_dir "$official" --num_workers 8 --batches 8
        run attention 60 benchmarks/bench_attention.py
        ;;
    sample)
        # Exact mode is left out (its speed is no target and it equals the official output to 1e-16 in the parity
        # tests): fast modes are compared with the official latents. SDE and Heun share one process, so the two
        # compiled models are built once; each sampler's figures are printed as soon as it is done.
        run sampling 480 benchmarks/bench_sampling.py --official_dir "$official" --modes official,fast --compile
        ;;
    tiny)
        run train_tiny 300 benchmarks/bench_train.py --tiny --official_dir "$official" --repeats 3 \
            --variants eager,fused_adamw,compiled,checkpointed,compiled_checkpointed
        run sampling_tiny 300 benchmarks/bench_sampling.py --tiny --official_dir "$official" --sequential --compile \
            --modes official,fast \
            --steps 10 --repeats 1
        run data_tiny 120 benchmarks/bench_data.py --tiny --official_dir "$official" --num_workers 0
        run attention_tiny 60 benchmarks/bench_attention.py --tiny
        ;;
esac
