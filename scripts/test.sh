#!/usr/bin/env bash
# Installs what the test suite uses (Debian tools when missing, the project with its test
# extras) and runs the whole suite. Extra arguments go to pytest; MESHFED_TEST_WORKERS=0 runs
# the files one after another in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v dig >/dev/null 2>&1 || need+=(bind9-dnsutils)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "scripts/test.sh: missing ${need[*]}; install them (apt-get install -y ${need[*]})" >&2
    exit 1
  fi
fi
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# Two workers, one test file each at a time (--dist loadfile): a file's module fixtures start
# one mesh on the file's own 127.x block, and most of the suite waits on processes, not CPU.
exec python3 -m pytest -n "${MESHFED_TEST_WORKERS:-2}" --dist loadfile "$@"
