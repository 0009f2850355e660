#!/usr/bin/env bash
# The edgesim action's run step: every scenario with `edgesim run`, each into a folder of its
# own under EDGESIM_OUT (run folder, report.json, report.html, junit.xml); a verdict table in
# $GITHUB_STEP_SUMMARY; `status`, `failed` and `out-dir` in $GITHUB_OUTPUT. Exits 0 whatever the
# verdicts (so the artifacts are uploaded); the action's last step fails the job on `status`.
#
# Env: EDGESIM (the binary), EDGESIM_SCENARIOS (files or globs, space- or newline-separated),
# EDGESIM_TARGET, EDGESIM_ARGS, EDGESIM_OUT, GITHUB_OUTPUT, GITHUB_STEP_SUMMARY.
set -Eeuo pipefail
shopt -s nullglob

edgesim=${EDGESIM:?EDGESIM names the edgesim binary}
target=${EDGESIM_TARGET:-netns}
out=${EDGESIM_OUT:-edgesim-out}
summary=${GITHUB_STEP_SUMMARY:-/dev/null}
outputs=${GITHUB_OUTPUT:-/dev/null}
read -r -a extra <<<"${EDGESIM_ARGS:-}"
as_root() { if [ "$(id -u)" = 0 ] || [ "$target" = device ]; then "$@"; else sudo -E "$@"; fi; }

files=()
# Split on blanks without globbing, then expand each pattern by itself.
mapfile -t patterns < <(tr -s ' \t' '\n' <<<"${EDGESIM_SCENARIOS:?no scenarios given}" | grep -v '^$')
for pattern in "${patterns[@]}"; do
  # shellcheck disable=SC2206 # the pattern is globbed on purpose
  matched=($pattern)
  if [ ${#matched[@]} = 0 ]; then
    echo "::error::no scenario file matches $pattern" >&2
    { echo "status=2"; echo "failed=$pattern"; echo "out-dir=$out"; } >>"$outputs"
    exit 0
  fi
  files+=("${matched[@]}")
done
mkdir -p "$out"
out=$(realpath "$out")

status=0
failed=()
rows=()
for f in "${files[@]}"; do
  name=$(basename "$f"); name=${name%.yaml}; name=${name%.yml}
  dir="$out/$name"
  mkdir -p "$dir"
  echo "::group::$name ($f, target $target)"
  start=$(date +%s)
  set +e
  as_root "$edgesim" run --target "$target" --out "$dir/run" --report "$dir/report.json" \
    --junit "$dir/junit.xml" --html "$dir/report.html" "${extra[@]}" "$f"
  code=$?
  set -e
  took=$(( $(date +%s) - start ))
  echo "::endgroup::"
  # A run as root leaves root's files: hand them to the runner's user for the upload.
  [ "$(id -u)" = 0 ] || as_root chown -R "$(id -u):$(id -g)" "$dir" 2>/dev/null || true
  verdict=$(python3 - "$dir/report.json" "$code" <<'PY'
import json, sys
path, code = sys.argv[1], int(sys.argv[2])
try:
    r = json.load(open(path))
except (OSError, ValueError):
    print({2: "invalid scenario", 3: "infrastructure error"}.get(code, f"no report (exit {code})"))
    sys.exit()
a = r.get("assertions", [])
held = sum(1 for v in a if v.get("passed"))
bad = ", ".join(v["name"] for v in a if not v.get("passed"))
word = "passed" if code == 0 else "failed" if code == 1 else f"error (exit {code})"
print(f"{word}: {held}/{len(a)} assertions held" + (f" (failed: {bad})" if bad else "") + f", seed {r.get('seed')}")
PY
)
  echo "$name: $verdict (${took}s)"
  rows+=("| \`$name\` | $([ "$code" = 0 ] && echo ✅ || echo ❌) $verdict | ${took}s |")
  if [ "$code" != 0 ]; then
    failed+=("$name")
    # The worst outcome wins: an error (2, 3, …) over a failed assertion (1).
    if [ "$code" -gt "$status" ]; then status=$code; fi
  fi
done

{
  echo "### edgesim on \`$target\`"
  echo
  echo "| scenario | verdict | time |"
  echo "|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Reports (JSON, JUnit, HTML with the timeline) are in the uploaded artifact."
} >>"$summary"
{ echo "status=$status"; echo "failed=${failed[*]}"; echo "out-dir=$out"; } >>"$outputs"
