#!/usr/bin/env bash
# Runs each fuzz target for a bounded time, growing its corpus in
# fuzz/corpus/TARGET/. Usage: fuzz/run.sh [TARGET...] (all targets by default).
#   FUZZ_SECONDS    seconds per target (default 60)
#   FUZZ_SANITIZER  none (default) or address
# A target that fails leaves its input in fuzz/artifacts/TARGET/; the script
# goes on with the others and exits non-zero at the end.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-none}"
export PATH="$HOME/.cargo/bin:$PATH"
# cargo fuzz passes unstable (-Z) flags to rustc; this lets a stable
# toolchain accept them, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weightgate-fuzz-target}"

if ! command -v cargo-fuzz >/dev/null; then
  env -u CARGO_TARGET_DIR cargo install --locked cargo-fuzz@^0.13
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build --sanitizer "$sanitizer"

failed=()
for target in "${targets[@]}"; do
  echo "== $target: ${seconds}s"
  mkdir -p "corpus/$target"
  if ! cargo fuzz run --sanitizer "$sanitizer" "$target" "corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1; then
    failed+=("$target")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "all ${#targets[@]} targets ran ${seconds}s each without a failure"
