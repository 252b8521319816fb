#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the leaderboard page's browser test (tests/test_leaderboard_page.py),
# installed from Debian's packages `chromium` and `chromium-driver` when either is missing; a no-op otherwise.
# CI runs it before the tests (.ci/run): with CI set, that test fails rather than skips without a browser.
#
#   scripts/install_chromium.sh          # progress on stderr; exit 0 when both `chromium` and `chromedriver` run
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: no apt-get here; install chromium and its chromedriver by hand" >&2
    exit 1
fi
echo "installing Debian's chromium and chromium-driver ..." >&2
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"   # (-n: never wait for a password)
$SUDO apt-get update -qq >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >&2
chromium --version >&2
chromedriver --version >&2
