#!/usr/bin/env bash
# The model card's measures of one checkpoint, each resumable: BSDS500 val (100 photos drawn at 256 px) ODS/OIS/AP
# at 25 thresholds and the stroke measures, then the Sketchy gallery (1,250 photos drawn at 256 px, 1,250 sketch
# queries, EfficientNet-Lite0 base embedder) mAP@all against the raw photos.
#   train/campaigns/evaluate.sh CHECKPOINT OUT_DIR [WORKERS=1]      (CHECKPOINT: a name, a .safetensors or a run folder)
set -euo pipefail
checkpoint=$1 out=$2 workers=${3:-1}
data=${LINEDRAW_DATA:-$(dirname "$0")/../../../shared/data}
mkdir -p "$out"
linedraw convert "$data/bsds500/val/images" -o "$out/drawings" --checkpoint "$checkpoint" --size 256 --skip-existing -q
linedraw eval edges --drawings "$out/drawings" --gt "$data/bsds500/val/groundTruth" --thresholds 25 \
    --workers "$workers" --counts "$out/counts.json" -q --json "$out/edges.json" >/dev/null
linedraw eval strokes --drawings "$out/drawings" --json "$out/strokes.json" >/dev/null
[ -f "$out/sketchy.idx/manifest.json" ] || linedraw index build "$data/sketchy/photo" -o "$out/sketchy.idx" \
    --checkpoint "$checkpoint" --draw-size 256 --embedder efficientnet-lite0 -q
# The raw-photo baseline is the same for every checkpoint: built once beside OUT_DIR.
linedraw eval retrieval --index "$out/sketchy.idx" --queries "$data/sketchy/sketch" \
    --baseline-index "$(dirname "$out")/sketchy-raw.idx" -q --json "$out/retrieval.json" >/dev/null
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
e = json.load(open(f"{out}/edges.json"))["scores"]
s = json.load(open(f"{out}/strokes.json"))["means"]
r = json.load(open(f"{out}/retrieval.json"))["metrics"]
drawn = next(column["mAP@all"] for name, column in r.items() if name != "raw photos")
raw = r["raw photos"]["mAP@all"]
print(f"ODS {e['ods']:.3f} | OIS {e['ois']:.3f} | AP {e['ap']:.3f} | specks {s['speck_fraction']:.3f} | "
      f"stroke length {s['mean_stroke_length']:.1f} px | strokes {s['strokes']:.0f} | "
      f"checkerboard {s['checkerboard_energy']:.2g} | Sketchy mAP@all drawings {drawn:.3f} vs raw photos {raw:.3f}")
PY
