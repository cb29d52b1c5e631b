#!/usr/bin/env bash
# facecli quick start: the whole chain on real faces, in a few minutes on 2 CPU cores.
#
#   bash examples/quickstart.sh [OUTDIR]            (default OUTDIR: quickstart-out)
#
# align the bundled LFW photos -> pack the training people -> train a small backbone with ArcFace -> export ONNX
# -> build a pairs .bin from held-out people and eval it -> gallery build / calibrate / search / evaluate, then a
# summary table. Every step is one facecli command, printed before it runs, so you can rerun or adapt it.
#
# Settings (environment variables):
#   QUICKSTART_DATA   photo folder, one sub-folder per person   (default: examples/data/lfw-sample)
#   QUICKSTART_STEPS  training steps                            (default: 40)
#   QUICKSTART_BATCH  training batch size                       (default: 16)
#   FACECLI           how to call facecli                       (default: facecli, else python -m facecli)
#
# The model trained here sees 16 people for a minute: it proves the chain runs, it does not recognise faces.
# The README explains each step and how to swap in your own data and a pretrained backbone (--init).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA="${QUICKSTART_DATA:-$HERE/data/lfw-sample}"
OUT="${1:-quickstart-out}"
STEPS="${QUICKSTART_STEPS:-40}"
BATCH="${QUICKSTART_BATCH:-16}"
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
  echo "==== [$1/8] $2 ($((SECONDS - START)) s so far)"
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

step 3 "pack: the training people into insightface record files (train.rec/.idx/property)"
run pack "$OUT/split/train" "$OUT/pack" --quiet
echo "packed into $OUT/pack"

step 4 "train: MobileFaceNet with the ArcFace head, $STEPS steps"
rm -rf "$OUT/run"
run train "$OUT/pack" --out "$OUT/run" --backbone mobilefacenet --head arcface --embedding-size 128 \
  --steps "$STEPS" --batch-size "$BATCH" --lr 0.1 --warmup-steps 0 --seed 0 --quiet
echo "run directory: $OUT/run (config.toml, metrics.csv, checkpoints)"

step 5 "export: the trained backbone to ONNX, with its colour order and normalisation inside"
run export "$OUT/run" "$OUT/model.onnx" --quiet
echo "wrote $OUT/model.onnx"

step 6 "pairs + eval: a verification .bin from the held-out people, scored with the insightface protocol"
run pack pairs "$OUT/split/heldout" "$OUT/heldout.bin" --make-pairs 60 --quiet
run eval --model "$OUT/model.onnx" --bench "$OUT/heldout.bin" --out "$OUT/eval" --quiet
echo "report in $OUT/eval (report.json, roc.png, pairs.csv)"

step 7 "gallery: enrol held-out people, calibrate the threshold on strangers (FPIR 0.1), search"
run gallery build "$OUT/split/enrol" --model "$OUT/model.onnx" --out "$OUT/gallery.npz" --quiet
run gallery calibrate --gallery "$OUT/gallery.npz" --impostors "$OUT/split/strangers" --far 0.1
run gallery search "$OUT/split/probes" --gallery "$OUT/gallery.npz" --top-k 3 --out "$OUT/search.csv" --quiet
echo "decisions for every probe in $OUT/search.csv"

step 8 "gallery evaluate: open-set metrics on mated probes and held-out strangers"
run gallery evaluate --gallery "$OUT/gallery.npz" --probes "$OUT/split/probes" --fpir 0.1 --out "$OUT/gallery-eval" \
  --quiet

echo
"$PY" "$HERE/quickstart_summary.py" "$OUT" "$((SECONDS - START))"
