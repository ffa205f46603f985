#!/usr/bin/env bash
# Regenerates src/gen/ from protos/ with buf + ts-proto, offline.
# --check: regenerate into a temp dir and fail if src/gen/ differs (stale generated code).
set -euo pipefail
cd "$(dirname "$0")/.."
out=src/gen
if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  npx buf generate --template buf.gen.yaml --include-imports --include-wkt -o "$tmp" >/dev/null
  npx buf build -o "$tmp/src/gen/descriptors.binpb"
  if ! diff -r -q "$out" "$tmp/src/gen" >/dev/null; then
    diff -r -q "$out" "$tmp/src/gen" || true
    echo "src/gen is stale: run 'npm run gen' and commit the result" >&2
    exit 1
  fi
  echo "src/gen is up to date"
  exit 0
fi
rm -rf "$out"
npx buf generate --template buf.gen.yaml --include-imports --include-wkt
npx buf build -o "$out/descriptors.binpb"
echo "generated $(find "$out" -name '*.ts' | wc -l) files into $out"
