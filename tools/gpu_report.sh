#!/usr/bin/env bash
# One GPU report, in one command on a CUDA machine (about 5 minutes on one H100/H200):
#   1. every golden file checked on the GPU (float32, TF32 off)           -> OUT/golden.txt
#   2. the nine published models next to their timm peers: bf16 autocast, 224x224, batch 128 (64 for the
#      base models), inference and training images/s, peak memory, ratios from one process, and each
#      model's costliest operators in one step                              -> OUT/models.md, OUT/models.json
#   3. main.py --throughput of ACmix-S at batch 128                         -> OUT/throughput.txt
#
#     bash tools/gpu_report.sh [OUT]          (OUT defaults to output/gpu_report; PYTHON picks the interpreter)
#
# A step that fails is reported and the others still run; the exit status is then 1.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-output/gpu_report}
python=${PYTHON:-python3}
mkdir -p "$out"
failed=0

step() {  # step NAME FILE COMMAND...: run COMMAND, its output also into FILE
    local name=$1 file=$2
    shift 2
    echo "== $name"
    "$@" 2>&1 | tee "$file" || { echo "== $name FAILED"; failed=1; }
}

"$python" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())' \
    || exit 1

step 'golden files on the GPU' "$out/golden.txt" \
    "$python" tools/check_golden.py tests/data/golden/*.pt --device cuda

step 'published models next to their timm peers' /dev/null \
    "$python" tools/benchmark.py --dtype bfloat16 --warmup 3 --rounds 5 --profile 12 \
    --json "$out/models.json" --markdown "$out/models.md" \
    acmix_swin_tiny_patch4_window7_224:swin_tiny_patch4_window7_224@128 \
    acmix_swin_small_patch4_window7_224:swin_small_patch4_window7_224@128 \
    amixer_t:swin_tiny_patch4_window7_224@128 \
    amixer_s:swin_small_patch4_window7_224@128 \
    amixer_b:swin_base_patch4_window7_224@64 \
    amixer_deit_s:deit_small_patch16_224@128 \
    configs/swin_tiny_patch4_window7_224.yaml:swin_tiny_patch4_window7_224@128 \
    configs/swin_small_patch4_window7_224.yaml:swin_small_patch4_window7_224@128 \
    configs/swin_base_patch4_window7_224.yaml:swin_base_patch4_window7_224@64

step 'main.py --throughput, ACmix-S' "$out/throughput.txt" \
    "$python" main.py --cfg configs/acmix_swin_small_patch4_window7_224.yaml --throughput --batch-size 128 \
    --output "$(mktemp -d)"

exit $failed
