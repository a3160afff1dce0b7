#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that take untrusted bytes, on stable Rust, with
# cargo-afl (AFL++ built from the source cargo-afl vendors: no download, no nightly).
#
#   fuzz/run.sh [SECONDS] [TARGET...]     each target for SECONDS (default 60), one after another
#
# With FUZZ_PARALLEL=1 the targets run at once (each still for SECONDS). FUZZ_TARGET_DIR is
# where the instrumented build goes (default target/afl; CI keeps it outside its fresh clone so
# that only the workspace's own crates are rebuilt). Findings: $FUZZ_TARGET_DIR/out/TARGET/.
#
# Targets: jsonrpc, codec, agent (all three by default); see fuzz/src/lib.rs for what each
# checks. Installs cargo-afl and builds AFL++ when missing (kept outside the checkout, so a
# fresh clone reuses them: cargo's bin directory and ~/.local/share/afl.rs), builds the targets
# instrumented into target/afl/, runs each from the seed corpus fuzz/corpus/TARGET/, prints
# what it did, and fails when any target crashed (a panic, an invariant broken).
# docs/security.md, "Fuzzing", says how to reproduce a finding and how to run longer.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_AFL_VERSION=0.18.2 # the same as the `afl` dependency in fuzz/Cargo.toml
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(jsonrpc codec agent)

cargo_bin="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin"
export PATH="$cargo_bin:$PATH"

if ! cargo afl --version 2>/dev/null | grep -q "^cargo-afl ${CARGO_AFL_VERSION} "; then
    echo "-- installing cargo-afl ${CARGO_AFL_VERSION}"
    cargo install --locked --quiet cargo-afl --version "${CARGO_AFL_VERSION}"
fi
cargo afl --version

# AFL++ itself and its runtime, built once per rustc version (a rebuild is refused as
# "already built": that is the cached case).
if ! out=$(cargo afl config --build 2>&1); then
    if ! grep -q "already built" <<<"$out"; then
        echo "$out" >&2
        exit 1
    fi
fi

dir=${FUZZ_TARGET_DIR:-target/afl}
echo "-- instrumented build (${dir})"
CARGO_TARGET_DIR="${dir}" cargo afl build --release --locked --quiet -p ccd-fuzz \
    --features afl --bins

# No core-dump handler or CPU-governor tuning is needed (nor possible in some containers);
# no UI (the log goes to a file); no CPU pinning, so that runs can share a loaded machine.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1

# Fuzz one target; print what it did; fail when it crashed.
fuzz_one() {
    local target=$1 out="${dir}/out/$1"
    rm -rf "${out}"
    echo "-- fuzzing ${target} for ${seconds} s (log: ${out}.log)"
    if ! cargo afl fuzz -V "${seconds}" -i "fuzz/corpus/${target}" -o "${out}" \
        "${dir}/release/${target}" >"${out}.log" 2>&1; then
        tail -n 20 "${out}.log"
        echo "FAIL: afl-fuzz could not run ${target}" >&2
        return 1
    fi
    local stats="${out}/default/fuzzer_stats"
    stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "${stats}"; }
    echo "${target}: $(stat run_time) s, $(stat execs_done) executions ($(stat execs_per_sec)/s)," \
        "corpus $(stat corpus_count), edges $(stat bitmap_cvg), crashes $(stat saved_crashes)," \
        "hangs $(stat saved_hangs)"
    local crashes=("${out}"/default/crashes/id:*)
    if [ -e "${crashes[0]}" ]; then
        {
            echo "FAIL: ${target} crashed on ${#crashes[@]} input(s), in ${out}/default/crashes/;" \
                "the first:"
            od -c "${crashes[0]}" | head -n 8 || true
            "${dir}/release/${target}" <"${crashes[0]}" 2>&1 | grep -A 3 panicked || true
        } >&2
        return 1
    fi
}

mkdir -p "${dir}/out"
failed=0
if [ "${FUZZ_PARALLEL:-0}" = 1 ]; then
    pids=()
    for target in "${targets[@]}"; do
        fuzz_one "${target}" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "${pid}" || failed=1
    done
else
    for target in "${targets[@]}"; do
        fuzz_one "${target}" || failed=1
    done
fi
exit "${failed}"
