#!/usr/bin/env bash
# Installs Picket on one host without Ansible: what provisioning/site.yml
# does for a host, as one script. Run as root from a checkout with the
# binaries built (cargo build --release), or give --bin.
#
#   install.sh control [--san NAME_OR_IP]...
#       binaries, the picket user, /etc/picket/control.toml, the CA and
#       server certificate in /var/lib/picket, the unit, started. Prints
#       the CA fingerprint agents pin.
#   install.sh agent --server HOST:PORT --token TOKEN --ca-fingerprint sha256:HEX
#                    [--name NAME] [--role ROLE] [--source KIND:PATH]...
#       the binary, /etc/picket/agent.toml (sshd and fail2ban sources
#       unless --source is given), enrollment (the key is made here), the
#       unit, started. The token may come as PICKET_TOKEN instead.
#
# Common options: --bin DIR (default: target/release beside this script),
# --root DIR (install below DIR, for a staging root; implies --no-start),
# --no-start (install and enroll, but leave systemd alone).
# Running it again changes nothing that is in place: no second CA, no
# second enrollment; binaries, units and config are refreshed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mode=${1:-}
shift || true
bin="$here/../target/release"
root=""
start=1
sans=()
server="" token=${PICKET_TOKEN:-} fp="" name=$(hostname) role="" sources=()

die() { echo "install.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=${2:?--bin DIR}; shift 2 ;;
    --root) root=${2:?--root DIR}; start=0; shift 2 ;;
    --no-start) start=0; shift ;;
    --san) sans+=("--san" "${2:?--san NAME}"); shift 2 ;;
    --server) server=${2:?}; shift 2 ;;
    --token) token=${2:?}; shift 2 ;;
    --ca-fingerprint) fp=${2:?}; shift 2 ;;
    --name) name=${2:?}; shift 2 ;;
    --role) role=${2:?}; shift 2 ;;
    --source) sources+=("${2:?--source KIND:PATH}"); shift 2 ;;
    *) die "unknown option $1 (see the top of $0)" ;;
  esac
done
[ "$(id -u)" -eq 0 ] || die "run as root"

put() { # mode source destination
  install -D -m "$1" "$2" "$root$3"
}

units() {
  [ "$start" -eq 1 ] || return 0
  systemctl daemon-reload
  systemctl enable --now "$1"
}

case "$mode" in
  control)
    for b in picket-control picketctl; do put 0755 "$bin/$b" "/usr/local/bin/$b"; done
    # picketctl's shell completions and manual pages, made by picketctl
    # itself from its argument definitions.
    ctl="$root/usr/local/bin/picketctl"
    install -d -m 0755 "$root/usr/share/bash-completion/completions" \
      "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d" \
      "$root/usr/local/share/man/man1"
    "$ctl" completions bash >"$root/usr/share/bash-completion/completions/picketctl"
    "$ctl" completions zsh >"$root/usr/share/zsh/vendor-completions/_picketctl"
    "$ctl" completions fish >"$root/usr/share/fish/vendor_completions.d/picketctl.fish"
    "$ctl" man "$root/usr/local/share/man/man1"
    put 0644 "$here/../systemd/picket-control.service" /etc/systemd/system/picket-control.service
    user=root
    if [ -z "$root" ]; then
      id picket >/dev/null 2>&1 ||
        useradd --system --home-dir /var/lib/picket --no-create-home --shell /usr/sbin/nologin picket
      user=picket
    fi
    data="$root/var/lib/picket"
    install -d -m 0700 "$data"
    if [ ! -e "$data/ca.key" ]; then
      "$root/usr/local/bin/picket-control" init --data-dir "$data" "${sans[@]}" >/dev/null
    fi
    chown -R "$user:$user" "$data"
    install -d -m 0755 "$root/etc/picket"
    cat >"$root/etc/picket/control.toml.new" <<TOML
# Picket control plane configuration (written by provisioning/install.sh).
# Every key is in docs/reference.md.
data_dir = "$data"
name = "$(hostname)"
listen = "0.0.0.0:7443"
http_listen = "0.0.0.0:9464"
TOML
    # An operator's edits stay: the file is written only the first time.
    if [ -e "$root/etc/picket/control.toml" ]; then
      rm "$root/etc/picket/control.toml.new"
    else
      chmod 0640 "$root/etc/picket/control.toml.new"
      chown "root:$user" "$root/etc/picket/control.toml.new"
      mv "$root/etc/picket/control.toml.new" "$root/etc/picket/control.toml"
    fi
    units picket-control
    echo "CA fingerprint: $("$root/usr/local/bin/picket-control" ca-fingerprint --data-dir "$data")"
    ;;
  agent)
    [ -n "$server" ] || die "agent needs --server HOST:PORT"
    [ -n "$fp" ] || die "agent needs --ca-fingerprint sha256:HEX"
    put 0755 "$bin/picket-agent" /usr/local/bin/picket-agent
    put 0644 "$here/../systemd/picket-agent.service" /etc/systemd/system/picket-agent.service
    state="$root/var/lib/picket-agent"
    install -d -m 0700 "$state"
    install -d -m 0755 "$root/etc/picket"
    [ ${#sources[@]} -gt 0 ] || sources=(sshd:/var/log/auth.log fail2ban:/var/log/fail2ban.log)
    # Deploy steps run as a plain `deploy` user, never root unless told.
    if [ -z "$root" ]; then
      id deploy >/dev/null 2>&1 || useradd --create-home --shell /bin/bash deploy
    fi
    {
      echo "# Picket agent configuration (written by provisioning/install.sh)."
      echo "# Every key is in docs/reference.md."
      echo "server = \"$server\""
      echo "state_dir = \"$state\""
      echo "name = \"$name\""
      echo 'metrics_interval = "10s"'
      if [ -n "$role" ]; then printf '\n[labels]\nrole = "%s"\n' "$role"; fi
      printf '\n[exec]\ndefault_user = "deploy"\nusers = []\n'
      for s in "${sources[@]}"; do
        printf '\n[[source]]\nkind = "%s"\npath = "%s%s"\n' "${s%%:*}" "$root" "${s#*:}"
      done
    } >"$root/etc/picket/agent.toml.new"
    chmod 0600 "$root/etc/picket/agent.toml.new"
    mv "$root/etc/picket/agent.toml.new" "$root/etc/picket/agent.toml"
    if [ ! -e "$state/agent.crt" ]; then
      [ -n "$token" ] || die "agent needs --token (or PICKET_TOKEN) to enroll"
      labels=()
      [ -z "$role" ] || labels=(--label "role=$role")
      PICKET_TOKEN="$token" "$root/usr/local/bin/picket-agent" enroll --server "$server" \
        --ca-fingerprint "$fp" --name "$name" "${labels[@]}" --state-dir "$state" >/dev/null
    fi
    units picket-agent
    echo "Agent $name installed and enrolled with $server"
    ;;
  *)
    # The comment block at the top of this file.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
    ;;
esac
