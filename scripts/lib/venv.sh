# shellcheck shell=bash
# make_venv DIR: a Python venv at DIR for the scripts' PyPI tools. Debian's
# python3 makes one only with python3-venv installed: installed here when
# running as root.
make_venv() {
  local dir=$1
  [ -x "$dir/bin/python" ] && return 0
  mkdir -p "$(dirname "$dir")"
  if ! python3 -m venv "$dir" >/dev/null 2>&1; then
    rm -rf "$dir"
    if [ "$(id -u)" = 0 ]; then
      echo "installing python3-venv" >&2
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -m venv "$dir"
  fi
}

# pip_pinned DIR PACKAGE...: installs the pinned packages into the venv at
# DIR unless the same pins are in already.
pip_pinned() {
  local dir=$1
  shift
  local stamp
  stamp="$dir/.pins-$(basename "$0")"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$*" ]; then
    echo "$(basename "$0"): installing $*" >&2
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@" >&2
    echo "$*" >"$stamp"
  fi
}
