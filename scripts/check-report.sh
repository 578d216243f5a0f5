#!/usr/bin/env bash
# Checks a tracebench HTML report in a real headless browser (Chromium).
#
# Usage: scripts/check-report.sh RUN_DIR_OR_REPORT_HTML
#
# Opens the report headless, reads the verdict the page's own self-check writes
# into #tracebench-check (drawn marks per chart, script errors), and takes a
# full-page screenshot next to the report (report.png). Exit status: 0 when the
# page checked ok, 1 when the check failed, 2 on bad usage, 3 when no browser
# is available. Set CHROMIUM to use a particular browser binary.
set -euo pipefail

target="${1:-}"
if [ -z "$target" ]; then
    echo "usage: $0 RUN_DIR_OR_REPORT_HTML" >&2
    exit 2
fi
if [ -d "$target" ]; then
    report="$target/report.html"
else
    report="$target"
fi
if [ ! -f "$report" ]; then
    echo "check-report: no report at $report" >&2
    exit 2
fi
report_dir="$(cd "$(dirname "$report")" && pwd)"
report_abs="$report_dir/$(basename "$report")"
screenshot="${report_abs%.html}.png"

find_browser() {
    if [ -n "${CHROMIUM:-}" ]; then
        command -v "$CHROMIUM" && return 0
    fi
    for name in chromium chromium-browser google-chrome-stable google-chrome; do
        command -v "$name" && return 0
    done
    return 1
}

if ! browser="$(find_browser)"; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        echo "check-report: chromium not found; installing Debian's chromium package" >&2
        apt-get install -y chromium >/dev/null 2>&1 ||
            { apt-get update >/dev/null && apt-get install -y chromium >/dev/null; }
        browser="$(find_browser)" || { echo "check-report: chromium install failed" >&2; exit 3; }
    else
        echo "check-report: no chromium found. Install it (Debian/Ubuntu: sudo apt-get install -y chromium)" >&2
        echo "check-report: or set CHROMIUM=/path/to/chrome" >&2
        exit 3
    fi
fi

profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
    --disable-background-networking --disable-component-update --disable-sync
    --hide-scrollbars --user-data-dir="$profile")
url="file://$report_abs"

if ! dom="$(timeout 180 "$browser" "${flags[@]}" --virtual-time-budget=5000 --window-size=1280,900 --dump-dom "$url" 2>"$profile/dump.log")"; then
    echo "check-report: $browser failed to load the report:" >&2
    tail -n 20 "$profile/dump.log" >&2
    exit 1
fi
check="$(printf '%s' "$dom" | grep -o '<span id="tracebench-check"[^>]*>[^<]*' | head -n 1 || true)"
if [ -z "$check" ]; then
    echo "check-report: the page has no self-check element (not a tracebench report, or it did not parse)" >&2
    exit 1
fi
verdict="$(printf '%s' "$check" | sed -n 's/.*data-verdict="\([a-z]*\)".*/\1/p')"
message="${check#*>}"
height="$(printf '%s' "$check" | sed -n 's/.*data-height="\([0-9]*\)".*/\1/p')"
height="${height:-4000}"
if [ "$height" -gt 16000 ]; then height=16000; fi
if [ "$height" -lt 600 ]; then height=600; fi

rm -f "$screenshot"
if ! timeout 180 "$browser" "${flags[@]}" --virtual-time-budget=5000 --window-size="1280,$height" \
    --screenshot="$screenshot" "$url" >"$profile/shot.log" 2>&1 || [ ! -s "$screenshot" ]; then
    echo "check-report: screenshot failed:" >&2
    tail -n 20 "$profile/shot.log" >&2
    exit 1
fi

echo "$message"
echo "screenshot: $screenshot"
if [ "$verdict" != "ok" ]; then
    echo "check-report: FAILED ($report_abs)" >&2
    exit 1
fi
echo "check-report: ok ($report_abs)"
