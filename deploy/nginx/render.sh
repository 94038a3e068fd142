#!/bin/sh
# Writes the final nginx.conf to stdout from nginx.conf.template (or $1).
#
#   BIDDER_UPSTREAMS='server 127.0.0.1:18080;' \
#   SSE_UPSTREAMS='server 127.0.0.1:18081; server 127.0.0.1:18091;' \
#   WS_UPSTREAMS='server 127.0.0.1:18082;' LISTEN=127.0.0.1:8000 \
#     deploy/nginx/render.sh > "$prefix/nginx.conf"
#   nginx -p "$prefix/" -c "$prefix/nginx.conf" -e stderr
#
# TLS (docs/operations.md: "TLS and HTTP/2"), off unless TLS_LISTEN is set:
#   TLS_LISTEN       HTTPS with HTTP/2 on this port or address:port (e.g. 8443)
#   TLS_CERT         the certificate chain (PEM), required with TLS_LISTEN
#   TLS_KEY          its private key (PEM), required with TLS_LISTEN
#   TLS_PUBLIC_PORT  the HTTPS port clients use, for plain HTTP's redirects
#                    (default: TLS_LISTEN's port)
#   HSTS_MAX_AGE     Strict-Transport-Security max-age in seconds
#                    (default 31536000, one year)
# Tests only:
#   WS_REFUSE_UPGRADES=true  /ws answers 403 to every request, as a proxy
#                    that refuses WebSocket upgrades does (clients fall back
#                    to SSE and HTTP POST)
# With TLS on, LISTEN still serves plain HTTP: it redirects to https (308),
# except the event streams, /ws and /nginx-health.
#
# POSIX sh + awk only (no gettext/envsubst, works in the alpine nginx image).
# awk replaces the placeholders literally, so values may contain any
# character; nginx's own $variables are left alone. An unknown ${UPPER_CASE}
# placeholder is an error rather than silently becoming empty. Lines
# between "#@tls" and "#@end" are kept only with TLS on.
set -eu

template=${1:-"$(dirname -- "$0")/nginx.conf.template"}
: "${BIDDER_UPSTREAMS:?set BIDDER_UPSTREAMS, e.g. 'server 127.0.0.1:8080;'}"
: "${SSE_UPSTREAMS:?set SSE_UPSTREAMS, e.g. 'server 127.0.0.1:8081;'}"
: "${WS_UPSTREAMS:?set WS_UPSTREAMS, e.g. 'server 127.0.0.1:8082;'}"
LISTEN=${LISTEN:-8000}
TLS_LISTEN=${TLS_LISTEN:-}
TLS_CERT=${TLS_CERT:-}
TLS_KEY=${TLS_KEY:-}
TLS_PORT_SUFFIX=""
HSTS_MAX_AGE=${HSTS_MAX_AGE:-31536000}
WS_REFUSE=""
case ${WS_REFUSE_UPGRADES:-false} in
  true) WS_REFUSE="return 403;" ;;
  false) ;;
  *) echo "render.sh: WS_REFUSE_UPGRADES is true or false, not '$WS_REFUSE_UPGRADES'" >&2; exit 1 ;;
esac
if [ -n "$TLS_LISTEN" ]; then
  : "${TLS_CERT:?set TLS_CERT (the certificate file) with TLS_LISTEN}"
  : "${TLS_KEY:?set TLS_KEY (the private key file) with TLS_LISTEN}"
  public_port=${TLS_PUBLIC_PORT:-${TLS_LISTEN##*:}}
  case $public_port in
    '' | *[!0-9]*) echo "render.sh: TLS_PUBLIC_PORT (or TLS_LISTEN's port) is not a port: '$public_port'" >&2; exit 1 ;;
    443) ;;
    *) TLS_PORT_SUFFIX=":$public_port" ;;
  esac
  case $HSTS_MAX_AGE in
    '' | *[!0-9]*) echo "render.sh: HSTS_MAX_AGE is not a number of seconds: '$HSTS_MAX_AGE'" >&2; exit 1 ;;
  esac
fi
export BIDDER_UPSTREAMS SSE_UPSTREAMS WS_UPSTREAMS LISTEN TLS_LISTEN TLS_CERT TLS_KEY TLS_PORT_SUFFIX HSTS_MAX_AGE WS_REFUSE

awk '
BEGIN {
    split("BIDDER_UPSTREAMS SSE_UPSTREAMS WS_UPSTREAMS LISTEN TLS_LISTEN TLS_CERT TLS_KEY TLS_PORT_SUFFIX HSTS_MAX_AGE WS_REFUSE", names, " ")
    for (i in names) known[names[i]]
    tls = ENVIRON["TLS_LISTEN"] != ""
}
/^#@tls[ \t]*$/ { if (section) { fail("nested #@tls") } section = 1; next }
/^#@end[ \t]*$/ { if (!section) { fail("#@end without #@tls") } section = 0; next }
{
    line = $0; out = ""
    while (match(line, /\$\{[A-Z_][A-Z0-9_]*\}/)) {
        name = substr(line, RSTART + 2, RLENGTH - 3)
        if (!(name in known)) fail("unknown placeholder ${" name "}")
        out = out substr(line, 1, RSTART - 1) ENVIRON[name]
        line = substr(line, RSTART + RLENGTH)
    }
    if (!section || tls) print out line
}
function fail(message) {
    printf "render.sh: %s line %d: %s\n", FILENAME, FNR, message > "/dev/stderr"
    failed = 1; exit 1
}
END { if (failed) exit 1; if (section) { printf "render.sh: %s: #@tls without #@end\n", FILENAME > "/dev/stderr"; exit 1 } }
' "$template"
