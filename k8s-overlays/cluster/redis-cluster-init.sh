#!/bin/sh
# Forms a Redis Cluster of 3 primaries + 3 replicas from six empty
# `--cluster-enabled yes` nodes, the way operators do (redis-cli --cluster
# create), once: a cluster already formed is left alone, so the Job or
# container running this may run again after every deploy.
#   redis-cluster-init.sh host:port host:port host:port host:port host:port host:port
# Used by docker-compose.cluster.yml and k8s-overlays/cluster (POSIX sh: the
# redis image has no bash guarantees).
set -eu
[ "$#" -eq 6 ] || { echo "usage: $0 host:port x6" >&2; exit 2; }

first_host=${1%:*}
first_port=${1##*:}

# Every node up (pods and containers start in any order).
for node in "$@"; do
  tries=0
  until redis-cli -h "${node%:*}" -p "${node##*:}" ping >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -lt 120 ] || { echo "redis node $node does not answer" >&2; exit 1; }
    sleep 1
  done
done

if redis-cli -h "$first_host" -p "$first_port" cluster info | grep -q '^cluster_known_nodes:1\b'; then
  # redis-cli --cluster create wants addresses; hostnames resolve here.
  addresses=""
  for node in "$@"; do
    ip=$(getent hosts "${node%:*}" | awk '{print $1; exit}')
    [ -n "$ip" ] || { echo "cannot resolve ${node%:*}" >&2; exit 1; }
    addresses="$addresses $ip:${node##*:}"
  done
  # shellcheck disable=SC2086 # one word per address
  redis-cli --cluster create $addresses --cluster-replicas 1 --cluster-yes
else
  echo "the cluster is already formed"
fi

tries=0
until redis-cli -h "$first_host" -p "$first_port" cluster info | grep -q '^cluster_state:ok'; do
  tries=$((tries + 1))
  [ "$tries" -lt 60 ] || { echo "the cluster is not ok" >&2; exit 1; }
  sleep 1
done
echo "the Redis Cluster is ok"
