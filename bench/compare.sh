#!/usr/bin/env bash
# vigil vs PyTorch on the SmallCnn benchmark: one command, one table.
#
#   bench/compare.sh
#
# Runs `vigil throughput --json` (building target/release/vigil with
# `cargo build --release -p vigil-cli` if it is missing) and bench/peer/bench_torch.py,
# then prints img/s for each measurement and the ratio vigil / pytorch (> 1: vigil faster).
#
# Environment:
#   VIGIL_BIN         vigil binary (default: $CARGO_TARGET_DIR or target, /release/vigil)
#   VIGIL_BENCH_ARGS  extra arguments for `vigil throughput --json` (word-split)
#   TORCH_BENCH_ARGS  extra arguments for bench_torch.py, e.g. "--threads 2 --iters 50"
#   PYTHON            python interpreter (default: python3)
# Exit status: 0 if both sides ran, 1 if either failed (the table still shows what ran).
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PYTHON="${PYTHON:-python3}"
VIGIL_BIN="${VIGIL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/vigil}"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "compare.sh: $PYTHON not found; it is needed for the PyTorch side and the table." >&2
    exit 1
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
status=0

# --- vigil -------------------------------------------------------------------------------
vigil_ok=0
if [ ! -x "$VIGIL_BIN" ]; then
    echo "compare.sh: $VIGIL_BIN missing; building: cargo build --release -p vigil-cli" >&2
    if ! command -v cargo >/dev/null 2>&1; then
        echo "compare.sh: cargo not found; cannot build vigil." >&2
    elif ! cargo build --release -p vigil-cli >&2; then
        echo "compare.sh: cargo build --release -p vigil-cli failed." >&2
    fi
fi
if [ -x "$VIGIL_BIN" ]; then
    echo "compare.sh: running $VIGIL_BIN throughput --json ${VIGIL_BENCH_ARGS:-}" >&2
    # shellcheck disable=SC2086
    if "$VIGIL_BIN" throughput --json ${VIGIL_BENCH_ARGS:-} >"$TMP/vigil.out" 2>"$TMP/vigil.err"; then
        vigil_ok=1
    else
        echo "compare.sh: vigil throughput failed (exit $?); its stderr:" >&2
        tail -n 20 "$TMP/vigil.err" >&2
    fi
else
    echo "compare.sh: no vigil binary at $VIGIL_BIN; vigil column will be n/a." >&2
fi
[ "$vigil_ok" = 1 ] || status=1

# --- pytorch -----------------------------------------------------------------------------
torch_ok=0
if ! "$PYTHON" -c "import torch, numpy" >/dev/null 2>&1; then
    echo "compare.sh: PyTorch is not installed for $PYTHON. Install it with: pip install torch numpy" >&2
    echo "            (PyPI's Linux wheel pulls the nvidia-* CUDA libraries, ~5 GB; they are needed even on CPU.)" >&2
else
    echo "compare.sh: running $PYTHON bench/peer/bench_torch.py ${TORCH_BENCH_ARGS:-}" >&2
    # shellcheck disable=SC2086
    if "$PYTHON" bench/peer/bench_torch.py ${TORCH_BENCH_ARGS:-} >"$TMP/torch.out" 2>"$TMP/torch.err"; then
        torch_ok=1
    else
        echo "compare.sh: bench_torch.py failed (exit $?); its stderr:" >&2
        tail -n 20 "$TMP/torch.err" >&2
    fi
fi
[ "$torch_ok" = 1 ] || status=1

# --- table -------------------------------------------------------------------------------
[ "$vigil_ok" = 1 ] || : >"$TMP/vigil.out"
[ "$torch_ok" = 1 ] || : >"$TMP/torch.out"
"$PYTHON" - "$TMP/vigil.out" "$TMP/torch.out" <<'EOF' || status=1
import json, sys

KEYS = [("train_step_img_per_s", "train step"),
        ("forward_loss_img_per_s", "forward + per-sample loss"),
        ("pgd_step_img_per_s", "PGD step"),
        ("halo_step_img_per_s", "HALO step (ID img/s)")]

def last_json_object(path, who):
    """The last JSON object in the file that carries a benchmark key (tolerates log lines)."""
    text = open(path, encoding="utf-8", errors="replace").read()
    dec, found, i = json.JSONDecoder(), None, 0
    while True:
        i = text.find("{", i)
        if i < 0:
            break
        try:
            obj, end = dec.raw_decode(text, i)
        except ValueError:
            i += 1
            continue
        if isinstance(obj, dict) and any(k in obj for k, _ in KEYS):
            found = obj
        i = end
    if found is None and text.strip():
        sys.stderr.write(f"compare.sh: no benchmark JSON in {who}'s output:\n{text[-2000:]}\n")
    return found or {}

v = last_json_object(sys.argv[1], "vigil")
t = last_json_object(sys.argv[2], "bench_torch.py")

def num(d, k):
    x = d.get(k)
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None

def fmt(x):
    return "n/a" if x is None else f"{x:,.1f}"

print(f"vigil:   backend={v.get('backend', 'n/a')} threads={v.get('threads', '?')} batch={v.get('batch', '?')} input={v.get('input_shape', '?')}")
print(f"pytorch: torch={t.get('torch_version', 'n/a')} threads={t.get('threads', '?')} batch={t.get('batch', '?')} input={t.get('input_shape', '?')}")
rows = [("measurement", "vigil img/s", "pytorch img/s", "vigil/pytorch")]
missing = False
for k, label in KEYS:
    a, b = num(v, k), num(t, k)
    if a is None and b is None and k == "halo_step_img_per_s":
        continue  # both sides skipped it (--no-halo)
    missing |= a is None or b is None
    ratio = f"{a / b:.2f}x" if a is not None and b else "n/a"
    rows.append((label, fmt(a), fmt(b), ratio))
w = [max(len(r[i]) for r in rows) for i in range(4)]
for j, r in enumerate(rows):
    print(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}")
    if j == 0:
        print("  ".join("-" * x for x in w))
sys.exit(1 if missing else 0)
EOF
exit "$status"
