#!/usr/bin/env bash
# Install the Debian packages citysense runs against, if any is missing. Idempotent: on a
# machine that has them it only checks, so `make test` stays fast the second time.
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
# The `influx` shell an operator uses to look at the data (make run prints the query).
command -v influx >/dev/null 2>&1 || need+=(influxdb-client)
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
# mosquitto_sub/_pub, for watching alerts the way a grid worker's phone receives them.
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
# The headless browser of the web page tests (tests/integration/test_web.py, via Playwright).
[ -x /usr/bin/chromium ] || need+=(chromium)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing Debian packages: ${need[*]}"
# A new machine has no package lists yet: update first, or install finds nothing.
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
