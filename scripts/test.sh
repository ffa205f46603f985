#!/usr/bin/env bash
# The whole test suite: installs the real tools the integration tests use, builds remex
# (the integration tests run the built bin/remex.js as a user would) and runs vitest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test-deps.sh
# The docker runner's tests need an engine and the locally built test image; the script
# starts Debian's dockerd when none answers and says why when it cannot.
bash scripts/docker-env.sh || echo "test: no Docker engine; the docker runner tests will fail and say why" >&2
npm run --silent build
results=$(mktemp)
status=0
npx vitest run --reporter=default --reporter=json --outputFile="$results" "$@" || status=$?
# One plain closing line with the counts, whatever the reporter printed above.
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests + r.numTodoTests} skipped`);
' "$results" || true
rm -f "$results"
exit $status
