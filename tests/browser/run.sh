#!/usr/bin/env bash
# Runs the browser tests (Playwright via playwright-core, driving Debian's Chromium).
# Installs what is missing: Chromium (apt), fonts for CJK and emoji, and the npm
# packages of this folder. The server binary is $PARLEY_BIN, or target/debug/parley
# (built with `cargo build` if it is not there).
#   tests/browser/run.sh                 # all tests
#   tests/browser/run.sh flow.test.js    # some files
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$(cd ../.. && pwd)"

if [ ! -x /usr/bin/chromium ]; then
  echo "run.sh: installing chromium (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk fonts-noto-color-emoji >/dev/null
fi

if [ ! -d node_modules/playwright-core ] || [ ! -f node_modules/axe-core/axe.min.js ]; then
  echo "run.sh: installing npm packages"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent
fi

export PARLEY_BIN="${PARLEY_BIN:-$ROOT/target/debug/parley}"
if [ ! -x "$PARLEY_BIN" ]; then
  echo "run.sh: $PARLEY_BIN missing; running cargo build"
  (cd "$ROOT" && cargo build --quiet)
fi

if [ "$#" -gt 0 ]; then files=("$@"); else files=(*.test.js); fi
echo "run.sh: ${#files[@]} test file(s) against $PARLEY_BIN"
set +e
node --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
status=$?
set -e
if [ "$status" -eq 0 ]; then
  echo "run.sh: browser tests PASSED"
else
  echo "run.sh: browser tests FAILED (exit $status)"
fi
exit "$status"
