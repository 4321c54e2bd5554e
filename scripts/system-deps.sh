#!/usr/bin/env bash
# Install the Debian packages citysense needs, if any is missing. Idempotent: on a machine that
# has them it only checks, so `make run` and `make test` stay fast the second time.
#   scripts/system-deps.sh        what running needs (make run, stack-up, bench)
#   scripts/system-deps.sh test   that, plus what only the tests use (make test)
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
# The `influx` shell an operator uses to look at the data (make run prints the query).
command -v influx >/dev/null 2>&1 || need+=(influxdb-client)
# mosquitto_sub/_pub, for watching alerts the way a grid worker's phone receives them.
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)

if [ "${1:-}" = "test" ]; then
  # The /api/v2/write dialect's tests run against VictoriaMetrics.
  command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
  # The headless browser of the web page tests (tests/integration/test_web.py, via Playwright).
  [ -x /usr/bin/chromium ] || need+=(chromium)
  # A small CJK font, so the browser tests render Chinese labels, not empty boxes.
  [ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need+=(fonts-wqy-microhei)
  # The alert store's tests also run on a real PostgreSQL 15 (tests/postgres.py).
  [ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql)
fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing Debian packages: ${need[*]}"
# A new machine has no package lists yet: update first, or install finds nothing.
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
