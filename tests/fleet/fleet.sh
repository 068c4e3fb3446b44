#!/usr/bin/env bash
# A local five-host Picket fleet in Linux network namespaces: one namespace
# per VM of the reference fleet, with its name and address, wired to a
# private bridge that lives in a namespace of its own. Nothing is added to
# the host's own network: no address, no route, no bridge; the fleet's
# traffic cannot leave the machine. Needs root and iproute2.
#
#   fleet.sh up               make the namespaces and the bridge
#   fleet.sh down             remove them (what exists of them)
#   fleet.sh cut HOST         pull HOST's cable (its bridge port goes down)
#   fleet.sh restore HOST     plug it back in
#   fleet.sh exec HOST CMD…   run CMD inside HOST's namespace
#   fleet.sh run              up, then a control plane on vm-devops and an
#                             enrolled agent on every host, until Ctrl-C;
#                             everything is torn down on exit, even after
#                             a failure
#
# FLEET_PREFIX (default "pkt", at most 6 characters) names the namespaces
# (PREFIX-vm-prod, …, PREFIX-sw), so that two fleets can coexist.
# PICKET_BIN is the folder with the binaries (default: target/debug).
set -euo pipefail

P=${FLEET_PREFIX:-pkt}
if [ ${#P} -gt 6 ]; then
  echo "fleet: FLEET_PREFIX must be at most 6 characters" >&2
  exit 2
fi
# name:address:role, as the seeds have them.
HOSTS=(
  vm-prod:10.0.1.10:prod
  vm-staging:10.0.1.20:staging
  vm-monitor:10.0.1.30:monitor
  vm-security:10.0.1.40:security
  vm-devops:10.0.1.50:devops
)
CONTROL=vm-devops
CONTROL_ADDR=10.0.1.50
SW="$P-sw"

ns_of() { echo "$P-$1"; }

known() {
  local h
  for h in "${HOSTS[@]}"; do
    [ "${h%%:*}" = "$1" ] && return 0
  done
  echo "fleet: no host named $1 (hosts: ${HOSTS[*]%%:*})" >&2
  exit 2
}

up() {
  ip netns add "$SW"
  ip -n "$SW" link set lo up
  ip -n "$SW" link add br0 type bridge
  ip -n "$SW" link set br0 up
  local i=0 h name addr ns
  for h in "${HOSTS[@]}"; do
    i=$((i + 1))
    name=${h%%:*}
    addr=$(echo "$h" | cut -d: -f2)
    ns=$(ns_of "$name")
    ip netns add "$ns"
    ip link add "${P}a$i" type veth peer name "${P}b$i"
    ip link set "${P}a$i" netns "$ns"
    ip link set "${P}b$i" netns "$SW"
    ip -n "$ns" link set "${P}a$i" name eth0
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    # The bridge port is named after its host, for `cut`.
    ip -n "$SW" link set "${P}b$i" name "$name"
    ip -n "$SW" link set "$name" master br0
    ip -n "$SW" link set "$name" up
  done
}

down() {
  local h
  for h in "${HOSTS[@]}"; do
    ip netns del "$(ns_of "${h%%:*}")" 2>/dev/null || true
  done
  ip netns del "$SW" 2>/dev/null || true
}

run() {
  local bin=${PICKET_BIN:-target/debug} work pids=()
  bin=$(cd "$bin" && pwd)
  work=$(mktemp -d /tmp/picket-fleet.XXXXXX)
  cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    down
    rm -rf "$work"
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  up
  local cns fp ctl h name role tok
  cns=$(ns_of "$CONTROL")
  fp=$(ip netns exec "$cns" "$bin/picket-control" init --data-dir "$work/control" --san "$CONTROL_ADDR" |
    awk '/CA fingerprint/ {print $3}')
  ip netns exec "$cns" "$bin/picket-control" run --config "$work/control/control.toml" \
    --listen "$CONTROL_ADDR:7443" --http-listen "$CONTROL_ADDR:9464" 2>"$work/control.log" &
  pids+=($!)
  ctl=("$bin/picketctl" --server "$CONTROL_ADDR:7443" --ca "$work/control/ca.crt"
    --cert "$work/control/admin.crt" --key "$work/control/admin.key")
  for _ in $(seq 100); do
    ip netns exec "$cns" "${ctl[@]}" status >/dev/null 2>&1 && break
    sleep 0.2
  done
  for h in "${HOSTS[@]}"; do
    name=${h%%:*}
    role=${h##*:}
    tok=$(ip netns exec "$cns" "${ctl[@]}" token create --ttl 10m --uses 1 --label "role=$role")
    ip netns exec "$(ns_of "$name")" "$bin/picket-agent" enroll --server "$CONTROL_ADDR:7443" \
      --token "$tok" --ca-fingerprint "$fp" --name "$name" --state-dir "$work/$name" >/dev/null
    ip netns exec "$(ns_of "$name")" "$bin/picket-agent" run --config "$work/$name/agent.toml" \
      2>"$work/$name.log" &
    pids+=($!)
  done
  sleep 3
  ip netns exec "$cns" "${ctl[@]}" agents list
  echo
  echo "The fleet runs (logs in $work). Try:"
  echo "  ip netns exec $cns ${ctl[*]} agents list"
  echo "  FLEET_PREFIX=$P $0 cut vm-prod    # then: FLEET_PREFIX=$P $0 restore vm-prod"
  echo "Ctrl-C tears it all down."
  wait
}

cmd=${1:-}
shift || true
case "$cmd" in
  up) up ;;
  down) down ;;
  cut) known "${1:?host}"; ip -n "$SW" link set "$1" down ;;
  restore) known "${1:?host}"; ip -n "$SW" link set "$1" up ;;
  exec) known "${1:?host}"; h=$1; shift; exec ip netns exec "$(ns_of "$h")" "$@" ;;
  run) run ;;
  *)
    # The comment block at the top of this file.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
    ;;
esac
