#!/usr/bin/env bash
# Builds and runs the libFuzzer targets of fuzz/ on a stable Rust toolchain, with plain cargo:
# the same coverage instrumentation cargo-fuzz asks rustc for (SanitizerCoverage through
# -Cpasses=sancov-module and LLVM options, all stable flags), without its nightly-only
# sanitizer flags. `cargo fuzz run -O -s none --codegen-units 16 TARGET` works too (README.md).
#
#   fuzz/fuzz.sh build                      build every target (release profile of fuzz/Cargo.toml;
#                                           FUZZ_OPT_LEVEL=1 builds faster, runs slower;
#                                           FUZZ_DEBUG=none leaves out the line tables: each
#                                           target is ~150 MB with them, a few MB without; a
#                                           profile's `debug` as a string: none, limited, full)
#   fuzz/fuzz.sh list                       the targets
#   fuzz/fuzz.sh run TARGET [ARGS...]       fuzz until stopped; ARGS go to libFuzzer
#                                           (e.g. -max_total_time=600 -jobs=2 -workers=2)
#   fuzz/fuzz.sh smoke [SECONDS] [TARGET...]  each target for SECONDS (default 20), one after the
#                                           other; prints executions per target; fails on a crash
#   fuzz/fuzz.sh repro TARGET FILE...       run the target once on each FILE (a crash reproduces)
#   fuzz/fuzz.sh min TARGET CRASH           minimise a crashing input (writes minimized-from-*)
#   fuzz/fuzz.sh cmin TARGET                shrink the work corpus of TARGET to a covering set
#
# New inputs found while fuzzing go to $FUZZ_WORK/corpus/TARGET (default fuzz/target/work),
# never into the committed seeds in fuzz/corpus/TARGET; crashes to fuzz/artifacts/TARGET/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
WORK="${FUZZ_WORK:-$CARGO_TARGET_DIR/work}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
BIN_DIR="$CARGO_TARGET_DIR/$TRIPLE/release"

# Exactly the flags `cargo fuzz build -O -s none --codegen-units 16` passes (cargo-fuzz 0.13,
# project.rs), in its order, so the two share one build in fuzz/target: SanitizerCoverage
# counters, the PC table, comparison tracing, stack depth, cfg(fuzzing). Debug assertions and
# overflow checks come from the release profile in fuzz/Cargo.toml. `--target` keeps these
# flags away from build scripts and proc macros.
RUSTFLAGS_FUZZ="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
-Cllvm-args=-sanitizer-coverage-stack-depth \
-Ccodegen-units=16"

targets() {
  sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -vx 'palyra-fuzz'
}

build() {
  RUSTFLAGS="$RUSTFLAGS_FUZZ${RUSTFLAGS:+ $RUSTFLAGS}" cargo build --manifest-path "$here/Cargo.toml" \
    --target "$TRIPLE" --release --config "profile.release.debug=\"${FUZZ_DEBUG:-line-tables-only}\"" \
    --config "profile.release.opt-level=${FUZZ_OPT_LEVEL:-2}" --bins "$@"
}

# libFuzzer options every run gets: the target's dictionary if it has one, crashes kept per
# target, a timeout that flags hangs without tripping on a slow policy compile.
common_args() {
  local t=$1
  mkdir -p "$here/artifacts/$t"
  echo "-artifact_prefix=$here/artifacts/$t/" "-timeout=25"
  if [[ -f $here/dict/$t.dict ]]; then echo "-dict=$here/dict/$t.dict"; fi
}

check_target() {
  targets | grep -qx "$1" || { echo "unknown target $1; targets: $(targets | tr '\n' ' ')" >&2; exit 2; }
}

cmd=${1:-}
shift || true
case $cmd in
  build) build ;;
  list) targets ;;
  run)
    t=${1:?usage: fuzz.sh run TARGET [ARGS...]}
    shift
    check_target "$t"
    build --bin "$t"
    mkdir -p "$WORK/corpus/$t" "$here/corpus/$t"
    # shellcheck disable=SC2046 # common_args is a list of words
    exec "$BIN_DIR/$t" $(common_args "$t") "$@" "$WORK/corpus/$t" "$here/corpus/$t"
    ;;
  smoke)
    secs=${1:-20}
    shift || true
    list=("$@")
    if ((${#list[@]} == 0)); then mapfile -t list < <(targets); fi
    build
    printf '%-20s %12s %10s %8s %8s\n' target executions exec/s seconds corpus
    total=0
    for t in "${list[@]}"; do
      check_target "$t"
      mkdir -p "$WORK/corpus/$t" "$here/corpus/$t"
      log="$WORK/$t.log"
      # shellcheck disable=SC2046
      if ! "$BIN_DIR/$t" $(common_args "$t") -max_total_time="$secs" -print_final_stats=1 \
        "$WORK/corpus/$t" "$here/corpus/$t" >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "error: fuzz target $t failed (crash input in fuzz/artifacts/$t/; log $log)"
        exit 1
      fi
      runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
      rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
      units=$(find "$WORK/corpus/$t" "$here/corpus/$t" -type f | wc -l)
      printf '%-20s %12s %10s %8s %8s\n' "$t" "${runs:-?}" "${rate:-?}" "$secs" "$units"
      total=$((total + ${runs:-0}))
    done
    echo "total executions: $total"
    ;;
  repro)
    t=${1:?usage: fuzz.sh repro TARGET FILE...}
    shift
    check_target "$t"
    build --bin "$t"
    exec "$BIN_DIR/$t" -runs=1 "$@"
    ;;
  min)
    t=${1:?usage: fuzz.sh min TARGET CRASH}
    crash=${2:?usage: fuzz.sh min TARGET CRASH}
    check_target "$t"
    build --bin "$t"
    # shellcheck disable=SC2046
    exec "$BIN_DIR/$t" $(common_args "$t") -minimize_crash=1 -max_total_time=120 "$crash"
    ;;
  cmin)
    t=${1:?usage: fuzz.sh cmin TARGET}
    check_target "$t"
    build --bin "$t"
    mkdir -p "$WORK/corpus/$t" "$WORK/cmin/$t"
    rm -rf "${WORK:?}/cmin/$t" && mkdir -p "$WORK/cmin/$t"
    "$BIN_DIR/$t" -merge=1 "$WORK/cmin/$t" "$WORK/corpus/$t" "$here/corpus/$t"
    rm -rf "${WORK:?}/corpus/$t" && mv "$WORK/cmin/$t" "$WORK/corpus/$t"
    echo "minimised work corpus: $WORK/corpus/$t ($(find "$WORK/corpus/$t" -type f | wc -l) inputs)"
    ;;
  *)
    sed -n '2,20p' "${BASH_SOURCE[0]}"
    exit 2
    ;;
esac
