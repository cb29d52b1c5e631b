#!/usr/bin/env bash
# facecli quick start: the whole chain on real faces, in a few minutes on 2 CPU cores.
#
#   bash examples/quickstart.sh [OUTDIR]            (default OUTDIR: quickstart-out)
#
# align the bundled LFW photos -> pack the training people (and pairs of held-out people) -> train a small backbone
# from scratch with ArcFace -> fine-tune the bundled pretrained MobileFaceNet -> export both to ONNX -> eval the
# pretrained, from-scratch and fine-tuned models on the held-out pairs -> gallery build / calibrate / search /
# evaluate with the pretrained model, then a summary table. Every step is one facecli command, printed before it
# runs, so you can rerun or adapt it.
#
# Settings (environment variables):
#   QUICKSTART_DATA   photo folder, one sub-folder per person   (default: examples/data/lfw-sample)
#   QUICKSTART_STEPS  training steps from scratch               (default: 40)
#   QUICKSTART_BATCH  training batch size                       (default: 16)
#   QUICKSTART_FINETUNE_STEPS  fine-tuning steps (the first third train the head alone)  (default: 30)
#   FACECLI           how to call facecli                       (default: facecli, else python -m facecli)
#
# The model trained from scratch sees 16 people for a minute: it proves the chain runs, it does not recognise faces.
# The pretrained MobileFaceNet (examples/models, Apache-2.0, see its README) does: the evaluation and the gallery use
# it. docs/tutorial.md explains each step and how to swap in your own data and model.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA="${QUICKSTART_DATA:-$HERE/data/lfw-sample}"
OUT="${1:-quickstart-out}"
STEPS="${QUICKSTART_STEPS:-40}"
BATCH="${QUICKSTART_BATCH:-16}"
FT_STEPS="${QUICKSTART_FINETUNE_STEPS:-30}"
MODEL="$HERE/models/mobilefacenet.onnx"
IMAGENET=(--mean 123.675,116.28,103.53 --std 58.395,57.12,57.375)  # how the pretrained model was trained
# OpenMP threads that spin while waiting make torch ~10x slower whenever anything else uses the CPU (measured:
# MobileFaceNet forward+backward 24 s instead of 2.5 s on a busy 2-core machine); passive waiting costs nothing.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [ -z "${FACECLI:-}" ]; then
  if command -v facecli >/dev/null 2>&1; then FACECLI="facecli"; else FACECLI="python -m facecli"; fi
fi
read -r -a CLI <<<"$FACECLI"
PY="${CLI[0]}"
[ "${CLI[1]:-}" = "-m" ] || PY="python"

[ -d "$DATA" ] || { echo "quickstart: photo folder not found: $DATA" >&2; exit 2; }
mkdir -p "$OUT"
START=$SECONDS

run() {  # print the command, then run it
  echo "\$ facecli $*"
  "${CLI[@]}" "$@"
}
step() {
  echo
  echo "==== [$1/9] $2 ($((SECONDS - START)) s so far)"
}

step 1 "align: detect 5 landmarks in every photo and warp the face to the 112x112 ArcFace template"
run align "$DATA" "$OUT/aligned" --select center --workers 2 --quiet
echo "aligned crops and manifest.csv in $OUT/aligned"

step 2 "split people: 16 to train on; 24 held out that the model never sees (pairs, gallery, strangers)"
rm -rf "$OUT/split"
mkdir -p "$OUT/split"/{train,heldout,enrol,probes,strangers}
i=0
j=0
while IFS= read -r dir; do
  name="$(basename "$dir")"
  if [ $((i % 5)) -lt 2 ]; then
    cp -r "$dir" "$OUT/split/train/$name"
  else
    cp -r "$dir" "$OUT/split/heldout/$name"
    case $((j % 3)) in
      0)  # enrolled: first 3 photos in the gallery, the rest are probes that should be found
        mkdir -p "$OUT/split/enrol/$name" "$OUT/split/probes/$name"
        k=0
        while IFS= read -r photo; do
          if [ $k -lt 3 ]; then cp "$photo" "$OUT/split/enrol/$name/"; else cp "$photo" "$OUT/split/probes/$name/"; fi
          k=$((k + 1))
        done < <(find "$dir" -type f | LC_ALL=C sort) ;;
      1) cp -r "$dir" "$OUT/split/strangers/$name" ;;  # strangers for calibrating the threshold
      2) cp -r "$dir" "$OUT/split/probes/$name" ;;     # other strangers, searched: should come back "unknown"
    esac
    j=$((j + 1))
  fi
  i=$((i + 1))
done < <(find "$OUT/aligned" -mindepth 1 -maxdepth 1 -type d | LC_ALL=C sort)
for part in train heldout enrol probes strangers; do
  echo "  $part: $(find "$OUT/split/$part" -mindepth 1 -maxdepth 1 -type d | wc -l) people, $(find "$OUT/split/$part" -type f | wc -l) photos"
done

step 3 "pack: the training people into insightface record files, pairs of the held-out people into a .bin"
run pack "$OUT/split/train" "$OUT/pack" --quiet
run pack pairs "$OUT/split/heldout" "$OUT/heldout.bin" --make-pairs 60 --quiet
echo "packed into $OUT/pack and $OUT/heldout.bin"

step 4 "train from scratch: MobileFaceNet with the ArcFace head, $STEPS steps (a smoke run)"
rm -rf "$OUT/run"
run train "$OUT/pack" --out "$OUT/run" --backbone mobilefacenet --head arcface --embedding-size 128 \
  --steps "$STEPS" --batch-size "$BATCH" --lr 0.1 --warmup-steps 0 --seed 0 --quiet
echo "run directory: $OUT/run (config.toml, metrics.csv, checkpoints)"

step 5 "fine-tune the pretrained MobileFaceNet on the training people, $FT_STEPS steps, validated on the held-out pairs"
rm -rf "$OUT/finetune"
run train "$OUT/pack" --out "$OUT/finetune" --init "$MODEL" "${IMAGENET[@]}" --head arcface --augment lowres \
  --steps "$FT_STEPS" --batch-size "$BATCH" --freeze-backbone-steps $((FT_STEPS / 3)) --val "$OUT/heldout.bin" \
  --seed 0 --quiet
echo "run directory: $OUT/finetune (accuracy before and after in metrics.csv and the summary)"

step 6 "export: both trained backbones to ONNX, with their colour order and normalisation inside"
run export "$OUT/run" "$OUT/model.onnx" --quiet
run export "$OUT/finetune" "$OUT/finetuned.onnx" --quiet
echo "wrote $OUT/model.onnx and $OUT/finetuned.onnx"

step 7 "eval: the pretrained, from-scratch and fine-tuned models on the held-out pairs (insightface protocol)"
run eval --model "$MODEL" "${IMAGENET[@]}" --bench "$OUT/heldout.bin" --out "$OUT/eval-pretrained" --quiet
run eval --model "$OUT/model.onnx" --model "$OUT/finetuned.onnx" --bench "$OUT/heldout.bin" --out "$OUT/eval" --quiet
echo "reports in $OUT/eval-pretrained and $OUT/eval (report.json, roc.png, pairs.csv)"

step 8 "gallery (pretrained model): enrol held-out people, calibrate the threshold on strangers (FPIR 0.1), search"
run gallery build "$OUT/split/enrol" --model "$MODEL" "${IMAGENET[@]}" --out "$OUT/gallery.npz" --quiet
run gallery calibrate --gallery "$OUT/gallery.npz" --impostors "$OUT/split/strangers" --far 0.1
run gallery search "$OUT/split/probes" --gallery "$OUT/gallery.npz" --top-k 3 --out "$OUT/search.csv" --quiet
echo "decisions for every probe in $OUT/search.csv"

step 9 "gallery evaluate: open-set metrics on mated probes and held-out strangers"
run gallery evaluate --gallery "$OUT/gallery.npz" --probes "$OUT/split/probes" --fpir 0.1 --out "$OUT/gallery-eval" \
  --quiet

echo
"$PY" "$HERE/quickstart_summary.py" "$OUT" "$((SECONDS - START))"
