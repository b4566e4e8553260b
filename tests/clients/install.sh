#!/usr/bin/env bash
# Installs the real clients the compatibility and browser tests drive
# (tests/e2e/clients.rs, browser.rs, web/): Debian's Chromium and zbarimg, the npm packages pinned by
# package-lock.json, and the PyPI packages pinned by requirements.lock into
# target/clients-venv. `.ci/run` runs it before the README's test command;
# run it once yourself before `cargo test` on a new machine. Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

# Debian packages: Chromium for the page tests, zbarimg (zbar-tools) to
# decode the event wall's QR code from a screenshot.
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v zbarimg >/dev/null || need+=(zbar-tools)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian's ${need[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
chromium --version

(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)

venv="$root/target/clients-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check --require-hashes -r "$here/requirements.lock"
"$venv/bin/python" -c 'import biliass; print("biliass", biliass.__name__, "ok")'
