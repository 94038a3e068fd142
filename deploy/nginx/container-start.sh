#!/bin/sh
# The nginx container's command (docker-compose.yml): TLS from
# /etc/nginx/tls (docs/operations.md: "TLS and HTTP/2"), the configuration rendered with
# render.sh into /tmp/nginx, nginx in the foreground.
#
# /etc/nginx/tls/tls.crt and tls.key are the certificate chain and key
# (PEM). When they are missing, a development CA and a certificate for
# localhost, 127.0.0.1, ::1 and TLS_DEV_NAMES are made there with openssl
# (installed with apk if the image lacks it), kept for the next start.
# Upstreams, LISTEN, TLS_LISTEN and the rest come from the environment.
set -eu

here=$(dirname -- "$0")
tls_dir=${TLS_DIR:-/etc/nginx/tls}
if [ -n "${TLS_LISTEN:-}" ]; then
  TLS_CERT=${TLS_CERT:-$tls_dir/tls.crt}
  TLS_KEY=${TLS_KEY:-$tls_dir/tls.key}
  export TLS_CERT TLS_KEY
  if [ ! -s "$TLS_CERT" ] || [ ! -s "$TLS_KEY" ] || [ -s "$tls_dir/dev-ca.key" ]; then
    if ! command -v openssl >/dev/null 2>&1; then
      echo "container-start.sh: installing openssl to make a development certificate" >&2
      apk add --no-cache --quiet openssl >&2 || {
        echo "container-start.sh: no openssl: put your tls.crt and tls.key in $tls_dir" >&2
        exit 1
      }
    fi
    # shellcheck disable=SC2086 # TLS_DEV_NAMES is a list of names
    sh "$here/dev-cert.sh" "$tls_dir" ${TLS_DEV_NAMES:-}
    if [ -s "$tls_dir/dev-ca.crt" ]; then
      echo "container-start.sh: TLS with the development certificate; trust its CA, deploy/tls/dev-ca.crt on the host (README: \"TLS and HTTP/2\")" >&2
    fi
  fi
fi
mkdir -p /tmp/nginx
sh "$here/render.sh" "$here/nginx.conf.template" >/tmp/nginx/nginx.conf
exec nginx -p /tmp/nginx/ -c /tmp/nginx/nginx.conf -e stderr -g 'daemon off;'
