#!/bin/sh
# Writes the final nginx.conf to stdout from nginx.conf.template (or $1).
#
#   BIDDER_UPSTREAMS='server 127.0.0.1:18080;' \
#   SSE_UPSTREAMS='server 127.0.0.1:18081; server 127.0.0.1:18091;' \
#   WS_UPSTREAMS='server 127.0.0.1:18082;' LISTEN=127.0.0.1:8000 \
#     deploy/nginx/render.sh > "$prefix/nginx.conf"
#   nginx -p "$prefix/" -c "$prefix/nginx.conf" -e stderr
#
# POSIX sh + awk only (no gettext/envsubst, works in the alpine nginx image).
# awk replaces the four placeholders literally, so values may contain any
# character; nginx's own $variables are left alone. An unknown ${UPPER_CASE}
# placeholder is an error rather than silently becoming empty.
set -eu

template=${1:-"$(dirname -- "$0")/nginx.conf.template"}
: "${BIDDER_UPSTREAMS:?set BIDDER_UPSTREAMS, e.g. 'server 127.0.0.1:8080;'}"
: "${SSE_UPSTREAMS:?set SSE_UPSTREAMS, e.g. 'server 127.0.0.1:8081;'}"
: "${WS_UPSTREAMS:?set WS_UPSTREAMS, e.g. 'server 127.0.0.1:8082;'}"
LISTEN=${LISTEN:-8000}
export BIDDER_UPSTREAMS SSE_UPSTREAMS WS_UPSTREAMS LISTEN

awk '
BEGIN { known["BIDDER_UPSTREAMS"]; known["SSE_UPSTREAMS"]; known["WS_UPSTREAMS"]; known["LISTEN"] }
{
    line = $0; out = ""
    while (match(line, /\$\{[A-Z_][A-Z0-9_]*\}/)) {
        name = substr(line, RSTART + 2, RLENGTH - 3)
        if (!(name in known)) {
            printf "render.sh: %s line %d: unknown placeholder ${%s}\n", FILENAME, FNR, name > "/dev/stderr"
            failed = 1; exit 1
        }
        out = out substr(line, 1, RSTART - 1) ENVIRON[name]
        line = substr(line, RSTART + RLENGTH)
    }
    print out line
}
END { if (failed) exit 1 }
' "$template"
