#!/usr/bin/env bash
# Does the node keep up with a real 10 Hz lidar? One command: builds a bag from consecutive real scans at their
# recorded 10 Hz pace (fastpillars-ros make-bag), starts the node on sim time (fastpillars-ros launch), replays
# the bag at its recorded pace with /clock (fastpillars-ros replay --clock) and reports answered and dropped
# frames and the latency (replay's statistics; JSON beside the bag). Everything stays on loopback, in a
# private network namespace where permitted (scripts/netns_run.sh).
#
#   scripts/replay_10hz.sh [KITTI_DIR] [extra launch arguments, e.g. --model tiny360 -p cpu_threads:=2]
#
# KITTI_DIR: a KITTI-layout folder of consecutive scans (velodyne/*.bin; default: KITTI raw drive 0005, 154
# scans at 10 Hz, as extracted by scripts/extract_real_kitti.py). Env: PY (python, default .venv/bin/python),
# OUT (work folder, default a new temporary one), LOOPS (times the bag is played, default 1), MAX_FRAMES (use only
# the first N scans).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${FASTPILLARS_NETNS:-}" != 1 ]; then exec "$ROOT/scripts/netns_run.sh" "$0" "$@"; fi
KITTI="${1:-$ROOT/out/real/kitti_drives/2011_09_26_drive_0005}"
shift || true
PY="${PY:-$ROOT/.venv/bin/python}"
OUT="${OUT:-$(mktemp -d -t replay10hz.XXXXXX)}"
FP=("$PY" -m fastpillars_ros.cli)
BAG="$OUT/real_10hz.mcap"

[ -f "$BAG" ] || "${FP[@]}" make-bag --kitti "$KITTI" --out "$BAG" --rate 10 --topic /points ${MAX_FRAMES:+--max-frames "$MAX_FRAMES"} >&2
"${FP[@]}" launch --loopback --use-sim-time --input-topic /points "$@" >"$OUT/node.log" 2>&1 &
NODE=$!
trap 'kill -INT $NODE 2>/dev/null; wait $NODE 2>/dev/null || true' EXIT
# The node may quantise its INT8 model at first start (tens of seconds): wait up to 5 minutes for it.
"${FP[@]}" replay "$BAG" --clock --loopback --loops "${LOOPS:-1}" --wait-s 300 --stats-json "$OUT/replay_stats.json"
echo "statistics: $OUT/replay_stats.json, node log: $OUT/node.log" >&2
