#!/usr/bin/env bash
# Runs every test. Installs what the tests need on a fresh machine first:
# Debian's chromium, for the check that the HTML report renders in a real browser.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (Debian package) for the report browser check"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing and cannot be installed here (needs root and apt-get)" >&2
  fi
fi
export TRACEBENCH_REQUIRE_BROWSER=1
cargo test --all-targets "$@"
cargo test --doc
