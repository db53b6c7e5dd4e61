#!/usr/bin/env bash
# One GPU check of the whole toolkit, in under 8 minutes on a CUDA machine whose Python has torch/torchvision:
#   tests     pytest -m cuda (device code: training steps in every precision, CPU/CUDA agreement, a tiny run)
#   bench     `cadet bench` of mit_b1 (FRM+FFM baseline) at fp32 / bf16 / fp16, 640x480, batch 8
#   memory    peak memory of a few training steps of each configs/memory_plan_*.yaml at its own batch
#   compile   the same bench (bf16) with train.compile=false and =true
#   demo      `cadet demo` for 2 epochs on the GPU
# Each part has its own timeout, and the whole run a time budget; a failed part does not stop the others.
# It ends with one markdown block (part | status | key numbers | seconds) for benchmarks/RESULTS.md, also
# written to $OUT/gpu_check.md when OUT is set (with every part's log in $OUT/gpu_check_logs.txt).
#
# Without CUDA (or with GPU_CHECK_CPU=1) it says so and runs a short CPU fallback: tiny model and sizes,
# one step each, fp16 skipped, a one-epoch tiny demo; the test suite checks the script this way.
#
#   bash benchmarks/gpu_check.sh
#
# Environment:
#   PYTHON               interpreter (default python3, else python)
#   GPU_CHECK_WHEELS     folder of wheels (pydantic, faster-coco-eval, ...) installed with --no-deps into
#                        $GPU_CHECK_WORK/site and put on PYTHONPATH (default: .whl in the repo, if present)
#   GPU_CHECK_INSTALL    1 (default): `pip install --no-deps -e .` unless crossattentiondet already imports
#                        from this checkout; falls back to PYTHONPATH=src. 0: use whatever is importable
#   GPU_CHECK_CPU        1: CPU fallback even with a GPU (automatic without CUDA)
#   GPU_CHECK_BUDGET     seconds for all parts together (default 420 on a GPU, 300 on the CPU)
#   GPU_CHECK_SKIP       parts to leave out, e.g. "compile demo" (they are listed as skipped)
#   GPU_CHECK_WORK       scratch folder (default: a new temporary one)
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
PY="${PYTHON:-$(command -v python3 || command -v python)}"
WORK="${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}"
mkdir -p "$WORK/logs"
ROWS="$WORK/rows.tsv"
: >"$ROWS"
START_ALL=$(date +%s)
export PYTHONUNBUFFERED=1

say() { printf '[gpu_check] %s\n' "$*"; }

# ------------------------------------------------------------------------------------------ environment
WHEELS="${GPU_CHECK_WHEELS:-}"
if [[ -z "$WHEELS" && -d "$REPO/.whl" ]]; then WHEELS="$REPO/.whl"; fi
if [[ -n "$WHEELS" ]]; then
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        say "installing wheels from $WHEELS into $WORK/site"
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$WORK/site" "$WHEELS"/*.whl >"$WORK/logs/install_wheels.log" 2>&1; then
            export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
        else
            say "wheel install failed (see below); going on with what is installed"
            tail -n 5 "$WORK/logs/install_wheels.log"
        fi
    else
        say "GPU_CHECK_WHEELS=$WHEELS holds no .whl files; going on with what is installed"
    fi
fi

imports_here() {  # crossattentiondet importable, and from this checkout
    "$PY" - "$REPO" <<'EOF' >/dev/null 2>&1
import os, sys
import crossattentiondet
sys.exit(0 if os.path.realpath(crossattentiondet.__file__).startswith(os.path.realpath(sys.argv[1])) else 1)
EOF
}
if [[ "${GPU_CHECK_INSTALL:-1}" == "1" ]] && ! imports_here; then
    say "installing the project: pip install --no-deps -e ."
    if ! "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$WORK/logs/install.log" 2>&1 \
        || ! imports_here; then
        say "pip install -e . did not work (see $WORK/logs/install.log); using PYTHONPATH=src"
        export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
CADET=("$PY" -m crossattentiondet)

ENV_INFO="$("$PY" - <<'EOF' 2>&1
import platform, importlib
parts, cuda = [f"python {platform.python_version()}"], 0
try:
    import torch
    parts.append(f"torch {torch.__version__}")
    cuda = int(torch.cuda.is_available())
    if cuda:
        p = torch.cuda.get_device_properties(0)
        parts.append(f"{p.name} ({p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})")
    else:
        parts.append("no CUDA device")
except Exception as err:  # noqa: BLE001
    parts.append(f"torch not importable: {err}")
missing = []
for name in ("crossattentiondet", "torchvision", "pydantic", "faster_coco_eval", "yaml", "rich", "scipy",
             "matplotlib", "cv2", "pytest"):
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001
        missing.append(name)
if missing:
    parts.append("missing: " + ", ".join(missing))
print(cuda)
print("; ".join(parts))
EOF
)"
HAS_CUDA="$(head -n 1 <<<"$ENV_INFO")"
ENV_LINE="$(tail -n +2 <<<"$ENV_INFO" | tr '\n' ' ')"
if [[ "${GPU_CHECK_CPU:-0}" == "1" || "$HAS_CUDA" != "1" ]]; then
    MODE=cpu
    [[ "$HAS_CUDA" != "1" ]] && say "no CUDA device available: running the short CPU fallback (tiny sizes, 1 step each)"
    [[ "$HAS_CUDA" == "1" ]] && say "GPU_CHECK_CPU=1: running the short CPU fallback"
    BUDGET="${GPU_CHECK_BUDGET:-300}"
else
    MODE=cuda
    BUDGET="${GPU_CHECK_BUDGET:-420}"
fi
say "$ENV_LINE"
say "mode $MODE, budget ${BUDGET}s, work folder $WORK"

# ------------------------------------------------------------------------------------------ parts
# A tiny detector for the CPU fallback (a real mit_b1 step at 640x480 takes ~8 s on a 2-core CPU).
TINY_MODEL=("model.mit.embed_dims=[8,16,24,32]" "model.mit.depths=[1,1,1,1]" "model.mit.num_heads=[1,2,2,4]"
            "model.detector.fpn_channels=16" "model.detector.box_head_dim=32"
            "model.detector.rpn.pre_nms_top_n_test=100" "model.detector.rpn.post_nms_top_n_test=50")
if [[ "$MODE" == cuda ]]; then
    DEVICE=cuda SIZE=640x480 BATCH=8 STEPS=5 WARMUP=2 MEM_STEPS=2 MODEL=() COMPILE_BACKEND=inductor
    TESTS="tests"
else
    DEVICE=cpu SIZE=64x64 BATCH=1 STEPS=1 WARMUP=0 MEM_STEPS=1 MODEL=("${TINY_MODEL[@]}") COMPILE_BACKEND=eager
    TESTS="tests/test_cuda.py"
fi
BENCH_ESTIMATE=(--images 100 --runs 1)

skipped() { [[ " ${GPU_CHECK_SKIP:-} " == *" $1 "* ]]; }

# run_part ID TIMEOUT KIND COMMAND...: runs COMMAND under its own timeout (capped by what is left of the
# budget), stdout to logs/ID.out, both streams to logs/ID.log, and records a row: id, status, kind, seconds.
run_part() {
    local id="$1" limit="$2" kind="$3"
    shift 3
    local group="${id%%:*}"
    if skipped "$group" || skipped "$id"; then
        printf '%s\tskipped\t%s\t0\t%s\n' "$id" "$kind" "GPU_CHECK_SKIP" >>"$ROWS"
        say "$id: skipped (GPU_CHECK_SKIP)"
        return
    fi
    local left=$(( BUDGET - ($(date +%s) - START_ALL) ))
    if (( left < 10 )); then
        printf '%s\tskipped\t%s\t0\t%s\n' "$id" "$kind" "time budget used up" >>"$ROWS"
        say "$id: skipped (time budget used up)"
        return
    fi
    (( limit > left )) && limit=$left
    say "$id: $* (timeout ${limit}s)"
    local t0=$(date +%s) rc
    timeout --kill-after=15 "$limit" "$@" >"$WORK/logs/$id.out" 2>"$WORK/logs/$id.err"
    rc=$?
    local secs=$(( $(date +%s) - t0 ))
    cat "$WORK/logs/$id.out" "$WORK/logs/$id.err" >"$WORK/logs/$id.log"
    local status=ok
    if (( rc == 124 || rc == 137 )); then status="timeout (${limit}s)"; elif (( rc != 0 )); then status="failed (exit $rc)"; fi
    printf '%s\t%s\t%s\t%s\t\n' "$id" "$status" "$kind" "$secs" >>"$ROWS"
    say "$id: $status in ${secs}s"
}

skip_part() {  # ID KIND WHY
    printf '%s\tskipped\t%s\t0\t%s\n' "$1" "$2" "$3" >>"$ROWS"
    say "$1: skipped ($3)"
}

# 1. tests of device code
run_part tests 200 pytest "$PY" -m pytest -m cuda -q -p no:cacheprovider -o addopts="" -rfE "$TESTS"

# 2. mit_b1 at three precisions
for precision in fp32 bf16 fp16; do
    if [[ "$MODE" == cpu && "$precision" == fp16 ]]; then skip_part "bench:$precision" bench "fp16 needs CUDA"; continue; fi
    run_part "bench:$precision" 100 bench "${CADET[@]}" bench --config configs/original_baseline.yaml \
        model.backbone=mit_b1 "train.device=$DEVICE" "train.precision=$precision" "${MODEL[@]}" \
        --size "$SIZE" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" "${BENCH_ESTIMATE[@]}" --json
done

# 3. the GPU memory plans, each at its own batch (bf16, channels_last as configured)
mem_cpu=()
[[ "$MODE" == cpu ]] && mem_cpu=(train.precision=fp32 --batch 1)  # bf16 is emulated on most CPUs: slow
for plan in mit_b4_40gb mit_b5_40gb mit_b4_80gb mit_b5_80gb; do
    run_part "memory:$plan" 120 memory "${CADET[@]}" bench --config "configs/memory_plan_$plan.yaml" \
        "train.device=$DEVICE" "${MODEL[@]}" "${mem_cpu[@]}" --size "$SIZE" --steps "$MEM_STEPS" --warmup 1 \
        --no-infer "${BENCH_ESTIMATE[@]}" --json
done

# 4. torch.compile off and on (the same bf16 bench; on the CPU the eager backend, which compiles nothing)
compile_precision=bf16
[[ "$MODE" == cpu ]] && compile_precision=fp32
for flag in false true; do
    run_part "compile:$flag" $([[ $flag == true ]] && echo 240 || echo 90) bench "${CADET[@]}" bench \
        --config configs/original_baseline.yaml model.backbone=mit_b1 "train.device=$DEVICE" \
        "train.precision=$compile_precision" "train.compile=$flag" "train.compile_backend=$COMPILE_BACKEND" \
        "${MODEL[@]}" --size "$SIZE" --batch "$BATCH" --steps "$STEPS" --warmup "$(( WARMUP > 0 ? WARMUP : 1 ))" \
        --no-infer "${BENCH_ESTIMATE[@]}" --json
done

# 5. the demo, 2 epochs on the GPU (CPU: one tiny epoch of a few iterations)
if [[ "$MODE" == cuda ]]; then
    run_part demo 200 demo "${CADET[@]}" demo --out "$WORK/demo" train.epochs=2 train.device=cuda
else
    run_part demo 120 demo "${CADET[@]}" demo --out "$WORK/demo" train.epochs=1 train.device=cpu \
        data.synthetic.images=24 "data.synthetic.size=[64,64]" data.split.group_by=none train.batch_size=4 \
        train.max_iters_per_epoch=1 \
        eval.panels=0 eval.speed=false eval.robustness=false output.tensorboard=false
fi

# ------------------------------------------------------------------------------------------ summary
TOTAL=$(( $(date +%s) - START_ALL ))
SUMMARY="$WORK/gpu_check.md"
"$PY" - "$ROWS" "$WORK/logs" "$MODE" "$SIZE" "$BATCH" "$TOTAL" "$ENV_LINE" >"$SUMMARY" <<'EOF'
import json, re, sys, time
from pathlib import Path

rows_path, logs, mode, size, batch, total, env = sys.argv[1:8]
logs = Path(logs)
LABELS = {"tests": "tests (pytest -m cuda)", "demo": "demo (2 epochs)" if mode == "cuda" else "demo (1 tiny epoch)"}
BUDGETS = {"40gb": 40 * 1024, "80gb": 80 * 1024}


def last_error(part: str) -> str:
    text = (logs / f"{part}.log").read_text(errors="replace") if (logs / f"{part}.log").is_file() else ""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or re.match(r"^\w*(Error|Exception)\b", line):
            return line[:160]
    return lines[-1][:160] if lines else ""


def bench_json(part: str) -> dict:
    text = (logs / f"{part}.out").read_text(errors="replace")
    return json.loads(text[text.index("{"):])


def num(value, fmt: str) -> str:
    return "-" if value is None or value != value else format(value, fmt)


def numbers(part: str, kind: str, status: str) -> str:
    if kind == "pytest":
        text = (logs / f"{part}.log").read_text(errors="replace")
        counts = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed)", text)
        found = ", ".join(f"{n} {what}" for n, what in counts if what != "deselected")
        failed = [l.split(" ", 1)[1][:120] for l in text.splitlines() if l.startswith(("FAILED ", "ERROR "))]
        return found + (f"; {'; '.join(failed[:3])}" if failed else "") or last_error(part)
    if kind in ("bench", "memory"):
        r = bench_json(part)
        out = []
        if kind == "bench":
            out.append(f"train {num(r['train_images_per_s'], '.3g')} img/s ({num(r['train_step_s'], '.3g')} s/step"
                       f", batch {r['batch']})")
            if isinstance(r.get("infer_images_per_s"), (int, float)) and r["infer_images_per_s"] > 0:
                out.append(f"infer {num(r['infer_images_per_s'], '.3g')} img/s")
        else:
            out.append(f"batch {r['batch']}, {r['precision']}, {num(r['train_step_s'], '.3g')} s/step")
        peak = r.get("peak_mem_mb")
        unit = "CUDA max allocated" if str(r.get("device", "")).startswith("cuda") else "RSS"
        out.append(f"peak {num(peak, ',.0f')} MB ({unit})")
        budget = next((b for k, b in BUDGETS.items() if part.endswith(k)), None)
        if kind == "memory" and budget and unit != "RSS" and peak == peak:
            out.append(f"{'fits' if peak < budget * 0.95 else 'DOES NOT FIT'} {budget // 1024} GB "
                       f"({100 * peak / budget:.0f} %)")
        return ", ".join(out)
    if kind == "demo":
        text = (logs / f"{part}.log").read_text(errors="replace")
        took = re.search(r"demo finished in ([0-9.]+) min", text)
        # "test mAP, fused ...: 0.123" lines, or a ranking "  1. fused: ... 0.123 (0.100-0.150)"
        maps = re.findall(r"test mAP, ([^:(]+?)\s*(?:\([^)]*\))?:\s*([0-9.]+|n/a)", text)
        maps += [(d.split(":")[0].strip(), v) for d, v in
                 re.findall(r"^\s*\d+\.\s+(.+?)\s+([0-9.]+) \([0-9.]+-[0-9.]+\)\s*$", text, re.M)]
        found = ", ".join(f"{name} {value}" for name, value in maps[:6])
        return (f"test mAP: {found}" if found else "no mAP lines") + (f"; {took.group(1)} min" if took else "")
    return ""


rows = [line.rstrip("\n").split("\t") for line in Path(rows_path).read_text().splitlines() if line.strip()]
table = []
speeds = {}
for part, status, kind, secs, note in rows:
    label = LABELS.get(part, part.replace(":", " "))
    if part.startswith("bench:"):
        label = f"bench mit_b1 {part.split(':')[1]} {size} b{batch}"
    elif part.startswith("memory:"):
        label = f"memory plan {part.split(':')[1]}"
    elif part.startswith("compile:"):
        label = f"compile {'on' if part.endswith('true') else 'off'} (mit_b1 {size} b{batch})"
    if status == "skipped":
        key = note
    else:
        try:
            key = numbers(part, kind, status)
            if status != "ok" and kind != "pytest":
                key = f"{key}; {last_error(part)}" if key else last_error(part)
        except Exception:  # noqa: BLE001 - a part that failed has no numbers: show its error
            key = last_error(part) or "no output"
        if part.startswith("compile:") and status == "ok":
            speeds[part] = bench_json(part)["train_step_s"]
    table.append((label, status, key.replace("|", "/"), secs))
if len(speeds) == 2 and all(v == v and v > 0 for v in speeds.values()):
    ratio = speeds["compile:false"] / speeds["compile:true"]
    table = [(l, s, f"{k}; {ratio:.2f}x vs off" if l.startswith("compile on") else k, t) for l, s, k, t in table]

ok = sum(1 for _, s, _, _ in table if s == "ok")
skips = sum(1 for _, s, _, _ in table if s == "skipped")
print(f"### GPU check, {time.strftime('%Y-%m-%d %H:%M')} ({'CUDA' if mode == 'cuda' else 'CPU fallback, no CUDA'})")
print()
print(f"{env.strip()}. `bash benchmarks/gpu_check.sh`: {ok} parts ok, {len(table) - ok - skips} failed, "
      f"{skips} skipped, {total} s in all.")
print()
print("| part | status | key numbers | seconds |")
print("|---|---|---|---|")
for label, status, key, secs in table:
    print(f"| {label} | {status} | {key} | {secs} |")
EOF
echo
echo "===== gpu_check summary (paste into benchmarks/RESULTS.md) ====="
cat "$SUMMARY"
echo "===== end of summary ====="
if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    cp "$SUMMARY" "$OUT/gpu_check.md"
    for f in "$WORK"/logs/*.log; do printf '\n===== %s =====\n' "$(basename "$f")"; cat "$f"; done >"$OUT/gpu_check_logs.txt"
    say "written to $OUT/gpu_check.md (logs: $OUT/gpu_check_logs.txt)"
fi
# the exit status says whether every part that ran passed
awk -F'\t' '$2 ~ /^(failed|timeout)/ {bad = 1} END {exit bad}' "$ROWS"
