#!/bin/sh
# The report test renders HTML in headless Chromium (Debian's package; Playwright drives it, no browser download).
set -e
if command -v chromium >/dev/null 2>&1; then
  echo "browser: $(command -v chromium)"
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "browser: installing Debian package chromium"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "browser: chromium missing and not root; the report rendering test will be skipped"
fi
