#!/usr/bin/env bash
# One prepared check for a lent GPU: training throughput, batched seeds, and the paper preset's wall time.
#
#   bash benchmarks/gpu_check.sh [--tiny] [OUT_JSON]
#
# OUT_JSON: default $OUT/gpu_check.json (the device tool's output folder), else
# benchmarks/out/gpu_check.json. Writes ONE JSON file with three sections:
#   training    benchmarks/training.py rows: the CPL update of the cpu preset and the reference
#               configuration, plare-jax vs the PyTorch-eager baseline when torch is importable
#               (CUDA if that torch sees the GPU; a note otherwise), matmul peak, matmuls-only ceiling.
#   seeds       benchmarks/seeds.py: reference configuration, N = 1, 8, 64 seeds, one at a time vs
#               batched (plare_jax.batched), CPL phase; plus BC-phase rows at N = 1 and 64 ("seeds_bc").
#   projection  wall time of the paper preset (200,000 BC + 300,000 CPL updates, experiments/metaworld.py
#               PAPER) from the measured reference rates: BC MEASURED separately (seeds_bc rows), not
#               assumed equal to CPL; for 1 seed and for 64 seeds sequential vs batched. Training
#               updates only (no evaluation, collection or labelling).
# Budget: under 8 minutes on one GPU (each step has its own timeout; a step that fails or times out
# is recorded in "steps" and "notes", the JSON is still written, and the script then exits 1).
# --tiny: tiny sizes on CPU (JAX_PLATFORMS=cpu), seconds per step: the smoke run of the tests.
set -euo pipefail

TINY=0
OUT_JSON=""
for arg in "$@"; do
  case "$arg" in
    --tiny) TINY=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) if [[ -z "$OUT_JSON" ]]; then OUT_JSON="$arg"; else echo "unexpected argument: $arg" >&2; exit 2; fi ;;
  esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "$OUT_JSON" ]]; then
  if [[ -n "${OUT:-}" ]]; then OUT_JSON="$OUT/gpu_check.json"; else OUT_JSON="$ROOT/benchmarks/out/gpu_check.json"; fi
fi
mkdir -p "$(dirname "$OUT_JSON")"
PY="${PYTHON:-python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"

if [[ "$TINY" == 1 ]]; then
  export JAX_PLATFORMS=cpu
  TRAIN_ARGS=(--tiny --seconds 0.1)
  SEEDS_ARGS=(--tiny --seconds 0.05)
  T_TRAIN=120; T_SEEDS=120; T_BC=90
else
  # 5 s per timed row; K = 100 updates per call for the seed rows (the paper preset's pipeline calls
  # train with metrics_every = 1000, so 100 still counts one host sync per call against it).
  TRAIN_ARGS=(--seconds 5)
  SEEDS_ARGS=(--seconds 5 --steps 100 --row-timeout-s 120)
  T_TRAIN=170; T_SEEDS=170; T_BC=110
fi

: > "$WORK/steps.tsv"
: > "$WORK/notes.txt"
FAILED=0
# run_step NAME TIMEOUT_S CMD...: runs CMD under `timeout`, output to the terminal and NAME.log;
# records NAME, exit status and seconds in steps.tsv (a failure does not stop the other steps).
run_step() {
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS rc=0
  echo "== $name (timeout ${limit}s): $*" >&2
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$WORK/$name.log" || rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$*" >> "$WORK/steps.tsv"
  if [[ "$rc" != 0 ]]; then
    FAILED=1
    if [[ "$rc" == 124 || "$rc" == 137 ]]; then
      echo "$name: timed out after ${limit}s" >> "$WORK/notes.txt"
    else
      echo "$name: exit status $rc (log tail: $(tail -n 3 "$WORK/$name.log" | tr '\n' ' '))" >> "$WORK/notes.txt"
    fi
  fi
}

IMPLS=(jax)
if "$PY" -c "import torch" >/dev/null 2>&1; then
  IMPLS=(jax torch)
  TORCH_DEVICE="$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo unknown)"
  if [[ "$TORCH_DEVICE" != cuda && "$TINY" == 0 ]]; then
    echo "torch is importable but sees no GPU: its PyTorch-eager rows ran on the CPU, not a like-for-like GPU baseline" >> "$WORK/notes.txt"
  fi
else
  echo "torch is not importable: no PyTorch-eager baseline rows (pip install torch with CUDA to add them)" >> "$WORK/notes.txt"
fi

run_step training "$T_TRAIN" "$PY" benchmarks/training.py --presets reference cpu --impls "${IMPLS[@]}" \
  --devices --no-mask-rows "${TRAIN_ARGS[@]}" --out "$WORK/training.json"
run_step seeds "$T_SEEDS" "$PY" benchmarks/seeds.py --presets reference --seeds-list 1 8 64 --phases cpl \
  "${SEEDS_ARGS[@]}" --out "$WORK/seeds.json"
run_step seeds_bc "$T_BC" "$PY" benchmarks/seeds.py --presets reference --seeds-list 1 64 --phases bc \
  "${SEEDS_ARGS[@]}" --out "$WORK/seeds_bc.json"

"$PY" - "$WORK" "$OUT_JSON" "$TINY" <<'PYEOF'
import json, pathlib, sys

work, out, tiny = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3] == "1"
BC_STEPS, CPL_STEPS = 200_000, 300_000  # the paper preset (experiments/metaworld.py PAPER)
notes = [line for line in (work / "notes.txt").read_text().splitlines() if line]
steps = {}
for line in (work / "steps.tsv").read_text().splitlines():
    name, rc, seconds, cmd = line.split("\t", 3)
    steps[name] = {"exit_status": int(rc), "seconds": int(seconds), "command": cmd}


def load(name):
    path = work / f"{name}.json"
    if not path.exists():
        return {"error": f"{name} wrote no JSON (see steps/notes)"}
    return json.loads(path.read_text())


training, seeds, seeds_bc = load("training"), load("seeds"), load("seeds_bc")
for part in (training, seeds, seeds_bc):
    notes += part.get("notes", [])


def seed_row(payload, phase, mode, n):
    for r in payload.get("rows", []):
        if (r["phase"], r["mode"], r["seeds"]) == (phase, mode, n):
            return r
    return None


def hours(bc_rate, cpl_rate):
    return (BC_STEPS / bc_rate + CPL_STEPS / cpl_rate) / 3600.0


projection = {
    "schedule": {"bc_steps": BC_STEPS, "cpl_steps": CPL_STEPS},
    "bc_rate": "measured (benchmarks/seeds.py --phases bc rows), not assumed equal to the CPL rate",
    "scope": "training updates only: no evaluation (every 5,000 steps in the paper preset), no data, no labels",
    "runs": [],
}
for n in (1, 64):
    for mode in ("sequential", "batched"):
        bc, cpl = seed_row(seeds_bc, "bc", mode, n), seed_row(seeds, "cpl", mode, n)
        if bc and cpl:
            per_seed = hours(bc["steps_per_s_per_seed"], cpl["steps_per_s_per_seed"])
            projection["runs"].append({
                "seeds": n, "mode": mode, "bc_steps_per_s_per_seed": bc["steps_per_s_per_seed"],
                "cpl_steps_per_s_per_seed": cpl["steps_per_s_per_seed"], "steps_per_call": cpl["steps_per_call"],
                # all n seeds finish together (batched) or one after the other (sequential): the same formula
                # on per-seed rates, since a sequential seed's rate is already divided by the n seeds it waits for
                "wall_hours_all_seeds": per_seed,
            })
ref = next((r for r in training.get("rows", []) if r.get("kind") == "update" and r.get("impl") == "jax"
            and r.get("preset") == "reference" and "steps_per_s" in r), None)
if ref:
    projection["from_training_benchmark"] = {
        "cpl_steps_per_s": ref["steps_per_s"], "steps_per_call": 10,
        "bc_rate": "assumed equal to the CPL rate (training.py times CPL only; BC has half the rows per step)",
        "wall_hours_one_seed": hours(ref["steps_per_s"], ref["steps_per_s"]),
    }
one = next((r for r in projection["runs"] if r["seeds"] == 1 and r["mode"] == "sequential"), None)
if one:
    projection["wall_hours_one_seed"] = one["wall_hours_all_seeds"]
if not projection["runs"]:
    notes.append("projection: no measured reference BC and CPL rows to project from")

device = seeds.get("device") or {}
payload = {
    "benchmark": "gpu_check", "tiny": tiny, "device": device, "steps": steps, "notes": notes,
    "training": training, "seeds": seeds, "seeds_bc": seeds_bc, "projection": projection,
}
out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
print(f"\ndevice: {device.get('device_kind')} ({device.get('platform')})")
for r in projection["runs"]:
    print(f"paper preset, {r['seeds']} seed(s) {r['mode']}: {r['wall_hours_all_seeds']:.2f} h of training "
          f"(BC {r['bc_steps_per_s_per_seed']:.1f}, CPL {r['cpl_steps_per_s_per_seed']:.1f} steps/s per seed)")
for note in notes:
    print(f"note: {note}")
print(f"JSON: {out}")
PYEOF

exit "$FAILED"
