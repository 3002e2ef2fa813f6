#!/usr/bin/env bash
# One GPU report, in one command on a CUDA machine (about 7 minutes on one H100/H200):
#   1. every golden file checked on the GPU (float32, TF32 off)           -> OUT/golden.txt
#   2. the nine published models next to their timm peers: bf16 autocast, 224x224, batch 128 (64 for the
#      base models), inference and training images/s, peak memory, ratios from one process, and each
#      model's costliest operators in one step and where its training step's peak memory was allocated
#                                                                           -> OUT/models.md, OUT/models.json
#   3. main.py --throughput of ACmix-S at batch 128                         -> OUT/throughput.txt
#   4. ACmix-S training fed by 8 loader workers against a synthetic batch, on JPEG photographs written
#      to a scratch folder (tools/benchmark.py feed)                        -> OUT/feed.txt, OUT/feed.json
#   5. only with COMPILE=1 (several minutes more: each model compiles): training of the ACmix and AMixer
#      models short of their targets next to their peers, both compiled   -> OUT/compiled.md, OUT/compiled.json
#
#     bash tools/gpu_report.sh [OUT]          (OUT defaults to output/gpu_report; PYTHON picks the interpreter)
#
# The sizes come from the environment, so that the same script runs on the CPU as a quick check of itself:
#     DEVICE=cpu BATCH=2 BASE_BATCH=2 WARMUP=0 ROUNDS=1 WORKERS=1 PHOTOS=8 SKIP=1 FEED_ROUNDS=1 bash tools/gpu_report.sh
# A step that fails is reported and the others still run; the exit status is then 1.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-output/gpu_report}
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
batch=${BATCH:-128}             # the tiny and small models' batch, in both modes
base_batch=${BASE_BATCH:-64}    # the base models'
warmup=${WARMUP:-3}
rounds=${ROUNDS:-5}
workers=${WORKERS:-8}           # step 4's loader workers
photos=${PHOTOS:-6400}          # step 4's training photographs: PHOTOS / BATCH steps an epoch
skip=${SKIP:-8}                 # step 4's untimed steps at each epoch's start
feed_rounds=${FEED_ROUNDS:-3}   # step 4's timed epochs of each feed
scratch=${SCRATCH:-${TMPDIR:-/tmp}/gpu_report_photos}  # step 4's photographs: not under OUT, which is kept
mkdir -p "$out"
failed=0

step() {  # step NAME FILE COMMAND...: run COMMAND, its output also into FILE
    local name=$1 file=$2
    shift 2
    echo "== $name"
    "$@" 2>&1 | tee "$file" || { echo "== $name FAILED"; failed=1; }
}

if [ "$device" = cuda ]; then
    "$python" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())' \
        || exit 1
fi

step "golden files on the $device" "$out/golden.txt" \
    "$python" tools/check_golden.py tests/data/golden/*.pt --device "$device"

step 'published models next to their timm peers' /dev/null \
    "$python" tools/benchmark.py --device "$device" --dtype bfloat16 --warmup "$warmup" --rounds "$rounds" \
    --profile 12 --memory-sites 10 --json "$out/models.json" --markdown "$out/models.md" \
    "acmix_swin_tiny_patch4_window7_224:swin_tiny_patch4_window7_224@$batch" \
    "acmix_swin_small_patch4_window7_224:swin_small_patch4_window7_224@$batch" \
    "amixer_t:swin_tiny_patch4_window7_224@$batch" \
    "amixer_s:swin_small_patch4_window7_224@$batch" \
    "amixer_b:swin_base_patch4_window7_224@$base_batch" \
    "amixer_deit_s:deit_small_patch16_224@$batch" \
    "configs/swin_tiny_patch4_window7_224.yaml:swin_tiny_patch4_window7_224@$batch" \
    "configs/swin_small_patch4_window7_224.yaml:swin_small_patch4_window7_224@$batch" \
    "configs/swin_base_patch4_window7_224.yaml:swin_base_patch4_window7_224@$base_batch"

step 'main.py --throughput, ACmix-S' "$out/throughput.txt" \
    "$python" main.py --cfg configs/acmix_swin_small_patch4_window7_224.yaml --throughput --batch-size "$batch" \
    --device "$device" --output "$(mktemp -d)"

rm -rf "$scratch"
step "$photos JPEG photographs for the loader" /dev/null \
    "$python" tools/make_demo_dataset.py --photos --num-train "$photos" --num-val "$batch" --out "$scratch"
step "ACmix-S fed by $workers loader workers and by a synthetic batch" "$out/feed.txt" \
    "$python" tools/benchmark.py feed "$scratch" --cfg configs/acmix_swin_small_patch4_window7_224.yaml \
    --device "$device" --workers "$workers" --batch-size "$batch" --skip "$skip" --rounds "$feed_rounds" \
    --json "$out/feed.json"
rm -rf "$scratch"

if [ "${COMPILE:-0}" = 1 ]; then
    step 'training, compiled, next to compiled peers' /dev/null \
        "$python" tools/benchmark.py --device "$device" --dtype bfloat16 --compile --skip-inference \
        --warmup "$warmup" --rounds "$rounds" --json "$out/compiled.json" --markdown "$out/compiled.md" \
        "acmix_swin_tiny_patch4_window7_224:swin_tiny_patch4_window7_224@$batch" \
        "acmix_swin_small_patch4_window7_224:swin_small_patch4_window7_224@$batch" \
        "amixer_t:swin_tiny_patch4_window7_224@$batch" \
        "amixer_deit_s:deit_small_patch16_224@$batch"
fi

exit $failed
