#!/usr/bin/env bash
# Offline checks of template.yaml, one line per check. Needs only the project venv on PATH
# (sam, cfn-lint, python3): no AWS credentials, no Docker, no python3.14.
#   PATH="$PWD/.venv/bin:$PATH" bash tools/template_checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export SAM_CLI_TELEMETRY=0 AWS_EC2_METADATA_DISABLED=true
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
REGION=us-east-1

work="$(mktemp -d "${TMPDIR:-/tmp}/template-checks.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# check NAME COMMAND...: run it quietly; print "ok NAME (Ns)", or "FAIL NAME" with its output.
check() {
    local name="$1"; shift
    local started=$SECONDS
    if "$@" >"$work/last.log" 2>&1; then
        printf 'ok    %-58s (%ds)\n' "$name" $((SECONDS - started))
    else
        printf 'FAIL  %s\n' "$name"
        sed 's/^/      /' "$work/last.log"
        exit 1
    fi
}

# file_matches DIR PATTERN: some file under DIR matches the glob PATTERN (a path below DIR).
file_matches() {
    compgen -G "$1/$2" >/dev/null
}

check "sam validate --lint" \
    sam validate --lint --template-file template.yaml --region "$REGION"

check "SAM transform (samtranslator, offline)" \
    python3 tools/sam_transform.py template.yaml --region "$REGION" -o "$work/template.json"

# cfn-lint >= 1.54 checks AWS::Serverless::* only against SAM schemas; the transformed
# CloudFormation gets the full rule set (E3030 runtimes, E3002 properties, ...). No rules are
# ignored: warnings fail too, until one is justified here with --ignore-checks.
check "cfn-lint on the transformed template" \
    cfn-lint --regions "$REGION" -- "$work/template.json"

# checkov (its own venv; path in $CHECKOV): zero failed checks; every skip is justified next to its
# resource in template.yaml (tests/unit/test_template.py checks each skip carries a comment).
check "checkov: 0 failed checks" \
    "${CHECKOV:-checkov}" -f template.yaml --framework cloudformation --skip-download --quiet --compact

# Docker-free: both resources use BuildMethod makefile (arm64 cp314 wheels cross-installed).
check "sam build (makefile, arm64, no Docker)" \
    sam build --template-file template.yaml --build-dir "$work/build" --cache-dir "$work/cache" \
        --no-cached --region "$REGION"

layer="$work/build/SharedLayer/python"
check "layer has python/ppcollector/__init__.py" test -f "$layer/ppcollector/__init__.py"
check "layer has no __pycache__ in ppcollector" \
    bash -c '! find "$1/ppcollector" -name __pycache__ | grep -q .' _ "$layer"
check "layer has ijson's arm64 cp314 C backend" \
    file_matches "$layer" "ijson/backends/_yajl2*.cpython-314-aarch64-linux-gnu.so"
check "layer has aws_lambda_powertools and requests" \
    test -f "$layer/aws_lambda_powertools/__init__.py" -a -f "$layer/requests/__init__.py"
check "function artifact has app.py" test -f "$work/build/TapPollerFunction/app.py"
ocsf="$work/build/OcsfLayer/python"
check "OCSF layer has ppocsf, its schema file and pyarrow's arm64 cp314 build" \
    bash -c 'test -f "$1/ppocsf/ocsf_1_1_0.json" && compgen -G "$1/pyarrow/lib.cpython-314-aarch64-linux-gnu.so"' _ "$ocsf"
check "SharedLayer has neither ppocsf nor pyarrow" bash -c '! test -e "$1/ppocsf" -o -e "$1/pyarrow"' _ "$layer"
# The writer's deployed size, unzipped (Lambda: 250 MB for the function and all its layers).
printf '      sizes (unzipped): SharedLayer %s, OcsfLayer %s\n' \
    "$(du -sh "$layer" | cut -f1)" "$(du -sh "$ocsf" | cut -f1)"

# Every distribution the build put into the layer has the version shared/constraints.txt pins
# (without -c, pip took the newest certifi and charset-normalizer on the day of the build).
layer_pins() {
    python3 - "$1" shared/constraints.txt <<'PY'
import pathlib, re, sys
pins = {}
for line in pathlib.Path(sys.argv[2]).read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
        name, _, version = line.partition("==")
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
built = {}
for info in pathlib.Path(sys.argv[1]).glob("*.dist-info"):
    name, version = info.name[:-len(".dist-info")].rsplit("-", 1)
    built[re.sub(r"[-_.]+", "-", name).lower()] = version
wrong = {name: (version, pins.get(name)) for name, version in built.items() if pins.get(name) != version}
print("built:", sorted(built.items()))
sys.exit(f"layer versions differ from the pins (built, pinned): {wrong}" if wrong or not built else 0)
PY
}
check "layer packages are exactly the pinned versions" layer_pins "$layer"

echo "template checks passed"
