#!/usr/bin/env bash
# Checks for a machine with a CUDA GPU: the test suite with the GPU visible (runs given no --device then train on
# it), then the command line's main paths on the GPU: the demo under bf16, train under fp16 with eval, linprobe,
# zeroshot, an --input-size the model cannot take, and torchrun with one process (NCCL).
#
#   tools/gpu_check.sh [DATA_DIR] [LOG_DIR]
#
# DATA_DIR holds cifar10_resnets/ and mnist/ (default ../shared/data); the logs go to LOG_DIR (default
# gpu_check_logs): pytest.log names each test as it ends, so a run cut short still says which failed. PYTHON picks
# the interpreter (python3), JOBS the pytest-xdist workers where it is installed (8), each with one CPU thread
# unless OMP_NUM_THREADS says otherwise (on 16 cores, 12 workers with a thread per core had run 97 % of the suite
# after 330 s; 14 with one thread each ran it all in 2 minutes). Exit status: pytest's.
set -u
DATA=$(cd "${1:-../shared/data}" && pwd) || exit 2
LOGS=${2:-gpu_check_logs}
PY=${PYTHON:-python3}
mkdir -p "$LOGS" && LOGS=$(cd "$LOGS" && pwd)
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1 VPROMPT_SHARED_DATA=$DATA
stage() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

stage versions
"$PY" -c "import torch, torchvision, timm, open_clip, numpy; print('torch', torch.__version__, '| torchvision',
torchvision.__version__, '| timm', timm.__version__, '| open_clip', open_clip.__version__, '| numpy', numpy.__version__)
assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name(0))" || exit 2

stage "test suite"
parallel=() threads=()
if "$PY" -c "import xdist" 2>/dev/null; then parallel=(-n "${JOBS:-8}") threads=("OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}"); fi
env "${threads[@]}" "$PY" -m pytest -v -rfE -p no:cacheprovider "${parallel[@]}" --junitxml="$LOGS/junit.xml" tests >"$LOGS/pytest.log" 2>&1
status=$?
grep -E "(FAILED|ERROR) " "$LOGS/pytest.log" | sort -u
tail -n 1 "$LOGS/pytest.log"

stage "demo, bf16, 2 epochs"
"$PY" -m vprompt demo --data-dir "$DATA" --output "$WORK/demo" --epochs 2 --precision bf16 --adamw-lr 0.3 \
    >"$LOGS/demo.log" 2>&1
echo "demo: exit status $?"
grep "^| " "$LOGS/demo.log"

C=(--model cifar:resnet20 --pretrained "$DATA/cifar10_resnets" --dataset mnist --data-dir "$DATA/mnist" -b 128
   --label-map ilm --workers 2 --output "$WORK/runs")
stage "train (fp16), eval"
"$PY" -m vprompt train "${C[@]}" --method evp --epochs 2 --precision fp16 --name fp16 2>&1 | tail -n 3
"$PY" -m vprompt eval --checkpoint "$WORK/runs/fp16" --split val --precision bf16 2>&1 | tail -n 1
"$PY" -m vprompt eval --checkpoint "$WORK/runs/fp16" --split test --json 2>&1 | tail -n 1

stage "an input size the model cannot take (refused in one line), and one it can"
"$PY" -m vprompt train --model tv:alexnet --pretrained none --dataset synthetic --input-size 16 --epochs 1 \
    --output "$WORK/runs" --name alexnet 2>&1 | tail -n 1
"$PY" -m vprompt train "${C[@]}" --method vp --input-size 48 --epochs 1 --precision bf16 --name vp48 2>&1 | tail -n 2

stage "linprobe"
"$PY" -m vprompt linprobe --model cifar:resnet20 --pretrained "$DATA/cifar10_resnets" --dataset mnist \
    --data-dir "$DATA/mnist" --output "$WORK/runs" --name probe 2>&1 | tail -n 2

stage "torchrun, one process (NCCL)"
"$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m vprompt train "${C[@]}" --method evp --epochs 1 \
    --precision bf16 --name ddp 2>&1 | tail -n 2

stage "zeroshot"
"$PY" -m vprompt zeroshot --model vprompt-tiny-clip --dataset synthetic --output "$WORK/runs" --name zs 2>&1 | tail -n 2

rm -rf "$WORK"
stage "done: pytest exit status $status"
exit $status
