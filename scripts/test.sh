#!/usr/bin/env bash
# The one command that runs every test of Spate: formatting, the Rust build and unit/integration tests
# (nextest), clippy, and the Python end-to-end tests that drive real Kafka clients (kcat,
# confluent-kafka, kafka-python) against a real `spate broker` process on loopback.
#
# It installs what it needs on a fresh machine (Debian's kcat, postgresql and util-linux's prlimit, a Python venv at
# .venv) and fails loudly when it cannot. A skipped Python test is a failure: tests never skip because a
# tool is missing; this script installs the tool instead. Usage:
#
#   ./scripts/test.sh                 everything (what CI runs)
#   ./scripts/test.sh setup           only install kcat and the venv
#   ./scripts/test.sh rust            fmt check, build, nextest, clippy
#   ./scripts/test.sh python [ARGS]   build the binaries, then pytest tests/python with extra ARGS (e.g. -k kcat)
#
# Environment: CARGO_TARGET_DIR is honoured; when unset and /work/spate-target exists, that directory is
# used so incremental builds survive fresh clones. SPATE_SKIP_LINT=1 skips fmt and clippy.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODE="${1:-all}"
if [ $# -gt 0 ]; then shift; fi
case "$MODE" in
    all | setup | rust | python) ;;
    -h | --help)
        sed -n '2,15p' "$0"
        exit 0
        ;;
    *)
        echo "test.sh: unknown mode '$MODE' (expected all, setup, rust or python)" >&2
        exit 2
        ;;
esac

VENV="$ROOT/.venv"
REQUIREMENTS="$ROOT/tests/python/requirements.txt"
# quixstreams pins an older confluent-kafka than the suite tests with: it gets a venv of its own.
QUIX_VENV="$ROOT/.venv-quix"
QUIX_REQUIREMENTS="$ROOT/tests/python/requirements-quix.txt"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/spate-test.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

export CI="${CI:-}"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
export DEBIAN_FRONTEND=noninteractive
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /work/spate-target ]; then
    export CARGO_TARGET_DIR=/work/spate-target
fi
# In CI the committed Cargo.lock must already be right; locally cargo may update it.
CARGO_LOCKED=()
if [ -n "$CI" ] && [ -f Cargo.lock ]; then CARGO_LOCKED=(--locked); fi

die() {
    echo >&2
    echo "test.sh: FATAL: $*" >&2
    exit 1
}
if [ -t 1 ]; then
    banner() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
    banner() { printf '\n==> %s\n' "$*"; }
fi

# Phase bookkeeping for the summary at the end.
PHASE_NAMES=()
PHASE_RESULTS=()
FAILED=0
TESTS_PASSED=0
TESTS_FAILED=0
TESTS_SKIPPED=0

# run_phase NAME COMMAND...: runs a phase, records ok/FAILED and its duration, never exits.
run_phase() {
    local name="$1"
    shift
    banner "$name"
    local start=$SECONDS rc=0
    "$@" || rc=$?
    local secs=$((SECONDS - start))
    PHASE_NAMES+=("$name")
    if [ "$rc" -eq 0 ]; then
        PHASE_RESULTS+=("ok       ${secs}s")
    else
        PHASE_RESULTS+=("FAILED   ${secs}s (exit $rc)")
        FAILED=1
    fi
    return "$rc"
}

skip_phase() {
    PHASE_NAMES+=("$1")
    PHASE_RESULTS+=("skipped  ($2)")
}

# --- setup -------------------------------------------------------------------------------------------

# ensure_debian_tool COMMAND PACKAGE: installs Debian's PACKAGE when COMMAND is not on PATH.
ensure_debian_tool() {
    local cmd="$1" pkg="$2"
    if command -v "$cmd" >/dev/null 2>&1; then
        echo "$cmd present: $(command -v "$cmd")"
        return 0
    fi
    echo "$cmd missing: installing Debian's $pkg package"
    apt_install "$pkg"
    command -v "$cmd" >/dev/null 2>&1 || die "$pkg was installed but $cmd is not on PATH"
    echo "installed $pkg"
}

# apt_install PACKAGE: installs Debian's PACKAGE (as root, or through sudo -n) or dies.
apt_install() {
    local pkg="$1"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "we are not root and there is no sudo: install Debian's $pkg package by hand"
        sudo=(sudo -n)
    fi
    local log="$WORK/apt.log"
    if ! "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -q >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "apt-get update failed (see above); cannot install $pkg"
    fi
    if ! "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$pkg" >>"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "apt-get install $pkg failed (see above)"
    fi
}

ensure_kcat() {
    ensure_debian_tool kcat kcat
    echo "kcat: $(kcat -V 2>&1 | grep -m1 -i version || true)"
}

# venv_from DIR REQUIREMENTS IMPORTS VERSIONS: makes (or reuses) a venv at DIR with REQUIREMENTS
# installed; IMPORTS is Python code that must run in it, VERSIONS prints what was installed. It is
# rebuilt when the requirement pins or the interpreter that built it change.
venv_from() {
    local dir="$1" requirements="$2" imports="$3" versions="$4"
    command -v python3 >/dev/null 2>&1 || die "python3 not found: it is needed for the end-to-end tests"
    local want stamp="$dir/.spate-requirements.sha256" name
    name="${requirements#"$ROOT"/}"
    want="$({ cat "$requirements"; python3 --version 2>&1; } | sha256sum | cut -d' ' -f1)"
    if [ -x "$dir/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
        "$dir/bin/python" -W ignore -c "$imports" >/dev/null 2>&1; then
        echo "reusing $dir (requirements unchanged)"
        return 0
    fi
    echo "creating $dir from $name"
    rm -rf "$dir"
    python3 -m venv "$dir" || die "python3 -m venv $dir failed (is the venv module installed?)"
    local log="$WORK/pip-$(basename "$dir").log"
    if ! "$dir/bin/python" -m pip install -q -r "$requirements" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        rm -rf "$dir"
        die "pip install -r $name failed (see above)"
    fi
    "$dir/bin/python" -W ignore -c "$imports" || die "$dir was installed but its packages do not import"
    echo "$want" >"$stamp"
    "$dir/bin/python" -W ignore -c "$versions"
}

ensure_venv() {
    venv_from "$VENV" "$REQUIREMENTS" \
        'import confluent_kafka, kafka, lz4.frame, zstandard, snappy, pytest, pytest_timeout, duckdb, pyarrow' \
        'import confluent_kafka, kafka; print("confluent-kafka", confluent_kafka.__version__, "librdkafka", confluent_kafka.libversion()[0], "kafka-python", kafka.__version__)'
}

# quixstreams pins an older confluent-kafka than the rest of the suite tests with.
ensure_quix_venv() {
    venv_from "$QUIX_VENV" "$QUIX_REQUIREMENTS" 'import quixstreams' \
        'import quixstreams, confluent_kafka; print("quixstreams", quixstreams.__version__, "confluent-kafka", confluent_kafka.__version__)'
}

# PostgreSQL for the JDBC and CDC connector tests: the fixtures (tests/python/pgserver.py,
# connect/tests/common/postgres.rs) start a throwaway server from Debian's binaries, which live in
# /usr/lib/postgresql/<version>/bin, not on PATH.
ensure_postgres() {
    if command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
        echo "postgresql present: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n 1)"
    else
        echo "postgresql missing: installing Debian's postgresql package"
        apt_install postgresql
        compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || die "postgresql was installed but no initdb in /usr/lib/postgresql/*/bin"
    fi
    if [ "$(id -u)" -eq 0 ]; then
        # The server refuses to run as root; the fixtures run it as the package's postgres user.
        getent passwd postgres >/dev/null || die "running as root but there is no postgres user to run PostgreSQL as"
        command -v setpriv >/dev/null 2>&1 || die "setpriv (util-linux) is needed to run PostgreSQL as the postgres user"
    fi
}

setup() {
    ensure_kcat
    ensure_postgres
    # The full-disk test runs the broker under `prlimit --fsize`.
    ensure_debian_tool prlimit util-linux
    ensure_venv
    ensure_quix_venv
}

# --- rust --------------------------------------------------------------------------------------------

fmt_check() { cargo fmt --all -- --check; }

# The example programs too: the Python tests run the spate-streams examples (test_streams.py finds
# them in the examples/ directory beside the spate binary, or in $SPATE_EXAMPLES_DIR).
build_bins() { cargo build "${CARGO_LOCKED[@]}" --workspace --bins --examples; }

# Runs the Rust tests and adds their counts to the totals.
rust_tests() {
    local out="$WORK/rust-tests.log" rc=0
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run "${CARGO_LOCKED[@]}" --workspace --no-fail-fast --no-tests=warn 2>&1 | tee "$out" || rc=$?
        # nextest's closing line: "Summary [ 1.2s] 12 tests run: 11 passed, 1 failed, 2 skipped"
        local summary
        summary="$(grep -E 'tests? run:' "$out" | tail -n 1 || true)"
        TESTS_PASSED=$((TESTS_PASSED + $(count_in "$summary" passed)))
        TESTS_FAILED=$((TESTS_FAILED + $(count_in "$summary" failed) + $(count_in "$summary" 'timed out')))
        TESTS_SKIPPED=$((TESTS_SKIPPED + $(count_in "$summary" skipped)))
    else
        echo "cargo-nextest not found; falling back to cargo test"
        cargo test "${CARGO_LOCKED[@]}" --workspace --no-fail-fast 2>&1 | tee "$out" || rc=$?
        local line
        while IFS= read -r line; do
            TESTS_PASSED=$((TESTS_PASSED + $(count_in "$line" passed)))
            TESTS_FAILED=$((TESTS_FAILED + $(count_in "$line" failed)))
            TESTS_SKIPPED=$((TESTS_SKIPPED + $(count_in "$line" ignored)))
        done < <(grep -E '^test result:' "$out" || true)
    fi
    return "$rc"
}

# count_in TEXT WORD: the number standing right before WORD in TEXT, or 0.
count_in() {
    local n
    n="$(grep -oE "[0-9]+ $2" <<<"$1" | head -n 1 | cut -d' ' -f1 || true)"
    echo "${n:-0}"
}

clippy() { cargo clippy "${CARGO_LOCKED[@]}" --workspace --all-targets -- -D warnings; }

# --- python ------------------------------------------------------------------------------------------

spate_bin() {
    local target_dir
    target_dir="${CARGO_TARGET_DIR:-}"
    if [ -z "$target_dir" ]; then
        target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
    fi
    case "$target_dir" in /*) ;; *) target_dir="$ROOT/$target_dir" ;; esac
    echo "$target_dir/debug/spate"
}

python_tests() {
    local bin xml="$WORK/pytest.xml" rc=0 p=0 f=0 s=0
    bin="$(spate_bin)"
    [ -x "$bin" ] || die "the spate binary was not built at $bin"
    echo "SPATE_BIN=$bin"
    SPATE_BIN="$bin" SPATE_QUIX_PYTHON="$QUIX_VENV/bin/python" "$VENV/bin/python" -m pytest tests/python -p no:cacheprovider -ra \
        --junitxml="$xml" "$@" || rc=$?
    if [ -f "$xml" ]; then
        local counts
        counts="$("$VENV/bin/python" - "$xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = sum(int(s.get("tests", 0)) for s in suites)
f = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
s_ = sum(int(s.get("skipped", 0)) for s in suites)
print(t - f - s_, f, s_)
EOF
)"
        read -r p f s <<<"$counts"
        TESTS_PASSED=$((TESTS_PASSED + p))
        TESTS_FAILED=$((TESTS_FAILED + f))
        TESTS_SKIPPED=$((TESTS_SKIPPED + s))
    fi
    # pytest exits 5 when it collected nothing: for us that is a broken suite, not a pass.
    if [ "$rc" -eq 0 ] && [ "${s:-0}" -gt 0 ]; then
        echo "test.sh: FAILED: ${s} Python test(s) skipped (reasons above, in pytest's short summary);" \
            "a test must not skip because something is missing: install it in setup() instead" >&2
        rc=1
    fi
    return "$rc"
}

# --- main --------------------------------------------------------------------------------------------

START=$SECONDS
echo "spate test run: mode=$MODE, CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-<default>}, CI=${CI:-<unset>}, $(nproc) cores"

if [ "$MODE" = all ] || [ "$MODE" = setup ] || [ "$MODE" = python ]; then
    # Setup failures are fatal: nothing after them can run meaningfully.
    run_phase "setup (kcat, postgresql, python venv)" setup || die "setup failed"
fi

if [ "$MODE" = all ] || [ "$MODE" = rust ]; then
    if [ "${SPATE_SKIP_LINT:-0}" = 1 ]; then
        skip_phase "cargo fmt --check" "SPATE_SKIP_LINT=1"
    else
        run_phase "cargo fmt --check" fmt_check || true
    fi
fi

# A full build directory holds several generations of test binaries; a disk that fills mid-link fails
# with a linker bus error that names nothing. Say so first, and drop what is cheapest to remake.
check_disk() {
    local dir="${CARGO_TARGET_DIR:-$ROOT/target}" free_kib
    mkdir -p "$dir"
    free_kib="$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')"
    echo "free space under $dir: $((free_kib / 1024 / 1024)) GiB"
    if [ "$free_kib" -lt $((16 * 1024 * 1024)) ] && [ -d "$dir/debug/incremental" ]; then
        echo "under 16 GiB free: removing $dir/debug/incremental (rustc remakes it)"
        rm -rf "$dir/debug/incremental"
        free_kib="$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')"
    fi
    if [ "$free_kib" -lt $((8 * 1024 * 1024)) ]; then
        die "only $((free_kib / 1024)) MiB free under $dir; the build needs about 8 GiB (remove old build output, e.g. cargo clean)"
    fi
}

BUILT=0
if [ "$MODE" = all ] || [ "$MODE" = rust ] || [ "$MODE" = python ]; then
    check_disk
    if run_phase "cargo build --workspace --bins --examples" build_bins; then BUILT=1; fi
fi

if [ "$MODE" = all ] || [ "$MODE" = rust ]; then
    if [ "$BUILT" = 1 ]; then
        run_phase "rust tests (nextest)" rust_tests || true
    else
        skip_phase "rust tests (nextest)" "build failed"
    fi
fi

if [ "$MODE" = all ] || [ "$MODE" = python ]; then
    if [ "$BUILT" = 1 ]; then
        run_phase "python e2e tests (pytest tests/python)" python_tests "$@" || true
    else
        skip_phase "python e2e tests (pytest tests/python)" "build failed"
    fi
fi

if [ "$MODE" = all ] || [ "$MODE" = rust ]; then
    if [ "${SPATE_SKIP_LINT:-0}" = 1 ]; then
        skip_phase "cargo clippy -D warnings" "SPATE_SKIP_LINT=1"
    else
        run_phase "cargo clippy -D warnings" clippy || true
    fi
fi

banner "summary ($((SECONDS - START))s)"
for i in "${!PHASE_NAMES[@]}"; do
    printf '  %-44s %s\n' "${PHASE_NAMES[$i]}" "${PHASE_RESULTS[$i]}"
done
if [ "$MODE" != setup ]; then
    echo
    echo "total: $TESTS_PASSED passed, $TESTS_FAILED failed, $TESTS_SKIPPED skipped"
fi
if [ "$FAILED" -ne 0 ]; then
    echo "test.sh: FAILED" >&2
    exit 1
fi
if [ "$MODE" != setup ] && [ $((TESTS_PASSED + TESTS_FAILED)) -eq 0 ]; then
    echo "test.sh: FAILED: no test ran" >&2
    exit 1
fi
echo "test.sh: all ok"
