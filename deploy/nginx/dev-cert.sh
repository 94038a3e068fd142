#!/bin/sh
# Makes a development certificate for nginx's TLS listener, unless DIR
# already holds one: a local certificate authority (dev-ca.crt, dev-ca.key)
# and a server certificate it signs (tls.crt, tls.key) for localhost,
# 127.0.0.1 and ::1, plus any names given.
#
#   deploy/nginx/dev-cert.sh DIR [NAME...]     # e.g. .run/tls auction.local
#
# Trust dev-ca.crt once (docs/operations.md: "TLS and HTTP/2") and every server
# certificate made with it is accepted, including those made later in the
# same DIR. A tls.crt that is not ours (no dev-ca.key beside it) is never
# touched; ours is made again when it expires within a day. The CA lasts
# ten years, a server certificate 397 days (the most browsers accept).
#
# POSIX sh + openssl (1.1.1 or newer), so the alpine nginx image runs it too.
set -eu

dir=${1:?usage: dev-cert.sh DIR [NAME...]}
shift
mkdir -p "$dir"
cd "$dir"

if [ -s tls.crt ] && [ -s tls.key ]; then
  if [ ! -s dev-ca.key ] || openssl x509 -in tls.crt -noout -checkend 86400 >/dev/null 2>&1; then
    exit 0 # given by the operator, or ours and still valid
  fi
fi

umask 077
if [ ! -s dev-ca.crt ] || [ ! -s dev-ca.key ]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout dev-ca.key -out dev-ca.crt -days 3650 -sha256 \
    -subj "/O=auction-fanout development/CN=auction-fanout development CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

names="DNS:localhost,IP:127.0.0.1,IP:::1"
for name in "$@"; do
  case $name in
    *:*) names="$names,IP:$name" ;;
    *[!0-9.]*) names="$names,DNS:$name" ;;
    *) names="$names,IP:$name" ;;
  esac
done
cat >server.ext <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $names
EXT
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout tls.key.new -out server.csr -subj "/CN=localhost" 2>/dev/null
openssl x509 -req -in server.csr -CA dev-ca.crt -CAkey dev-ca.key \
  -set_serial "0x$(openssl rand -hex 16)" -days 397 -sha256 \
  -extfile server.ext -out tls.crt.new 2>/dev/null
rm -f server.csr server.ext
mv tls.key.new tls.key
mv tls.crt.new tls.crt
# Readable by nginx's workers if they run as another user; the keys stay
# private to the owner.
chmod 644 dev-ca.crt tls.crt
echo "dev-cert.sh: made $dir/tls.crt for $names, signed by $dir/dev-ca.crt" >&2
