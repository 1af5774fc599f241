#!/usr/bin/env bash
# Make sure the system packages posedge needs are present: install them with apt as root,
# otherwise print the exact command to run and fail. Usage: tools/system-deps.sh run|test
set -euo pipefail
purpose="${1:-run}"

missing=()
have_lib() { ldconfig -p 2>/dev/null | grep -q "$1" || compgen -G "/usr/lib/*/$1*" >/dev/null; }
have_lib libzbar.so.0 || missing+=(libzbar0)                       # pyzbar's decoder
compgen -G "/usr/share/fonts/opentype/noto/NotoSansCJK-*.ttc" >/dev/null \
  || missing+=(fonts-noto-cjk)                                      # CJK glyphs for receipt PNGs
if [ "$purpose" = test ]; then
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
  # posedge-hq on PostgreSQL: the tests start their own server with Debian's initdb/pg_ctl
  command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
  [ -x /usr/sbin/nats-server ] || missing+=(nats-server)             # the second broker of tests/sync/
  [ -x /usr/bin/chromium ] || missing+=(chromium)                    # the status page's browser tests
fi

[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "posedge needs these system packages (Debian names): ${missing[*]}; install them with your package manager." >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=sudo
  else
    echo "posedge needs system packages that are not installed. Run:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    echo "then run this command again." >&2
    exit 1
  fi
else
  SUDO=
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
