#!/usr/bin/env bash
# The campaign's quick look at one checkpoint: the first N BSDS500 val photos by name, drawn at 256 px, scored with
# `linedraw eval edges` (9 thresholds) and `linedraw eval strokes`. A smoke signal between stints, not the card's
# 100-photo, 25-threshold table.
#   train/campaigns/quicklook.sh CHECKPOINT OUT_DIR [N=10]     (CHECKPOINT: a name, a .safetensors or a run folder)
set -euo pipefail
checkpoint=$1 out=$2 n=${3:-10}
data=${LINEDRAW_DATA:-$(dirname "$0")/../../../shared/data}/bsds500/val
mkdir -p "$out/photos"
ls "$data/images" | sort | head -n "$n" | while read -r f; do ln -sf "$(realpath "$data/images/$f")" "$out/photos/$f"; done
linedraw convert "$out/photos" -o "$out/drawings" --checkpoint "$checkpoint" --size 256 -q
linedraw eval edges --drawings "$out/drawings" --gt "$data/groundTruth" --thresholds 9 -q --json "$out/edges.json" >/dev/null
linedraw eval strokes --drawings "$out/drawings" --json "$out/strokes.json" >/dev/null
python - "$out" <<'PY'
import json, sys
e = json.load(open(f"{sys.argv[1]}/edges.json"))["scores"]
s = json.load(open(f"{sys.argv[1]}/strokes.json"))["means"]
print(f"ODS {e['ods']:.3f}  OIS {e['ois']:.3f}  AP {e['ap']:.3f}  specks {s['speck_fraction']:.3f}  "
      f"stroke length {s['mean_stroke_length']:.1f} px  strokes {s['strokes']:.0f}  checkerboard {s['checkerboard_energy']:.2g}")
PY
