#!/usr/bin/env bash
# Builds the Debian packages edgecap-agent, edgecap-coordinator and edgecap with cargo-deb,
# installs them with dpkg, checks what they install (files, conffiles, system users, systemd
# units with `systemd-analyze verify`), configures them as docs/operations.md tells an
# operator to, starts the installed binaries the way their units would, enrolls the agent,
# takes a sample capture of ping traffic on loopback through the installed `edgecap` CLI,
# then removes and purges the packages and checks that nothing of theirs is left.
#
# The packages are built from the already-built binaries (target/debug, or $EDGECAP_BIN_DIR)
# staged as a release target directory, so CI needs no release build: `cargo deb --no-build`
# packages them exactly as it packages a release build. Real packages: `cargo build --release`
# then `cargo deb -p <crate>`.
#
# "The way their units would": under systemd (PID 1), `systemctl start`. Without systemd (CI
# containers) the unit file is read and its process set-up reproduced: User/Group, the
# EnvironmentFile, ExecStart with $VAR expansion, StateDirectory (created and owned),
# UMask, NoNewPrivileges, and AmbientCapabilities/CapabilityBoundingSet (via setpriv). The
# file-system sandboxing options (ProtectSystem=...) need systemd and are checked by
# `systemd-analyze verify` and by reading the unit only.
#
# Needs root, and a machine without edgecap installed: it refuses to run otherwise. Everything
# it makes (packages, users, /etc/edgecap, /var/lib/edgecap, processes, temp files) is gone
# when it exits, failed or not. Network: loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN_DIR=${EDGECAP_BIN_DIR:-$ROOT/target/debug}
CARGO_DEB_VERSION=3.8.0
PACKAGES=(edgecap-agent edgecap-coordinator edgecap)
USERS=(edgecap-agent edgecap-coordinator)
ACCOUNT=pkgtest
TOKEN=pkgtest-account-token-0123456789
ADMIN_TOKEN=pkgtest-admin-token-0123456789abcdef
STARTED=0

say() { echo "check_packages: $*"; }
fail() {
    echo "check_packages: FAIL: $*" >&2
    exit 1
}
check() { # check DESCRIPTION COMMAND...: runs the command, fails with the description if it fails
    local what=$1
    shift
    if "$@"; then say "ok: $what"; else fail "$what"; fi
}

[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i, system users, capabilities)"
for tool in dpkg dpkg-deb setpriv unshare curl ping cargo systemd-analyze tshark; do
    command -v "$tool" >/dev/null || fail "$tool is missing (scripts/setup.sh installs what the tests need)"
done

# /var/lib/edgecap: without systemd, the test runs in its own mount namespace with a private,
# empty /var/lib/edgecap (a tmpfs), so that agents other programs run with the default spool
# directory (some end-to-end tests do, at the same time) neither disturb it nor are disturbed.
if [ ! -d /run/systemd/system ] && [ -z "${EDGECAP_PKGTEST_NAMESPACE:-}" ]; then
    for d in /var/lib/edgecap/pki /var/lib/edgecap/coordinator; do
        [ ! -e "$d" ] || fail "$d exists: edgecap is (or was) installed here; this test would remove it"
    done
    made=0
    [ -d /var/lib/edgecap ] || { mkdir /var/lib/edgecap && made=1; }
    # The run inside removes the mount point made here, once it has unmounted it.
    EDGECAP_PKGTEST_NAMESPACE=1 EDGECAP_PKGTEST_MADE_VARLIB=$made \
        exec unshare --mount --propagation private bash "$0" "$@"
fi

PRIVATE_VARLIB=0
WORK=""
PIDS=()
cleanup() {
    local rc=$?
    set +e
    if [ "$STARTED" = 1 ]; then
        if [ -d /run/systemd/system ]; then
            systemctl stop edgecap-agent.service edgecap-coordinator.service >/dev/null 2>&1
        fi
        for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
        for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
        dpkg --purge "${PACKAGES[@]}" >/dev/null 2>&1
        # What the operator made (the test checked that none of it existed before it began).
        rm -rf /etc/edgecap
        [ "$PRIVATE_VARLIB" = 1 ] || rm -rf /var/lib/edgecap
        for u in "${USERS[@]}"; do
            getent passwd "$u" >/dev/null && userdel "$u"
            getent group "$u" >/dev/null && groupdel "$u"
        done
        if [ "$rc" != 0 ] && [ -n "$WORK" ]; then
            for log in "$WORK"/*.log; do
                [ -f "$log" ] && { echo "---- $log"; tail -n 40 "$log"; }
            done
        fi
    fi
    if [ "$PRIVATE_VARLIB" = 1 ]; then
        umount /var/lib/edgecap
        [ "${EDGECAP_PKGTEST_MADE_VARLIB:-0}" = 0 ] || rmdir /var/lib/edgecap 2>/dev/null
    fi
    [ -n "$WORK" ] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${EDGECAP_PKGTEST_NAMESPACE:-}" ]; then
    mount -t tmpfs -o mode=0755,size=256m edgecap-pkgtest /var/lib/edgecap
    PRIVATE_VARLIB=1
else
    [ ! -e /var/lib/edgecap ] || fail "/var/lib/edgecap exists already; this test would remove it"
fi
for b in edgecap edgecap-agent edgecap-coordinator; do
    [ -x "$BIN_DIR/$b" ] || fail "$BIN_DIR/$b is missing: build first (cargo build --workspace)"
done

# Never touch a machine where edgecap is installed or was: this test installs and purges it.
for p in "${PACKAGES[@]}"; do
    if dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qv '^not-installed$'; then
        fail "package $p is installed (or its configuration is) on this machine; this test would purge it"
    fi
done
for u in "${USERS[@]}"; do
    if getent passwd "$u" >/dev/null || getent group "$u" >/dev/null; then fail "user or group $u exists already"; fi
done
[ ! -e /etc/edgecap ] || fail "/etc/edgecap exists already; this test would remove it"

if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
    say "installing cargo-deb $CARGO_DEB_VERSION (once)"
    cargo install -q cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi

WORK=$(mktemp -d /tmp/edgecap-packages.XXXXXX)
STARTED=1

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- 1. build the packages ------------------------------------------------------------------
say "building the packages with cargo-deb $CARGO_DEB_VERSION from $BIN_DIR"
mkdir -p "$WORK/target/release" "$WORK/debs"
for b in edgecap edgecap-agent edgecap-coordinator; do cp "$BIN_DIR/$b" "$WORK/target/release/"; done
for p in "${PACKAGES[@]}"; do
    (cd "$ROOT" && CARGO_TARGET_DIR="$WORK/target" cargo deb -p "$p" --no-build --locked --fast -o "$WORK/debs/") \
        >"$WORK/cargo-deb-$p.log" 2>&1 || { cat "$WORK/cargo-deb-$p.log"; fail "cargo deb -p $p"; }
done
ls -l "$WORK/debs"

# ---- 2. install -----------------------------------------------------------------------------
dpkg -i "$WORK"/debs/*.deb >"$WORK/dpkg-install.log" 2>&1 || { cat "$WORK/dpkg-install.log"; fail "dpkg -i"; }
for p in "${PACKAGES[@]}"; do
    check "$p is installed" test "$(dpkg-query -W -f='${db:Status-Status}' "$p")" = installed
done

# ---- 3. what they installed -----------------------------------------------------------------
for b in edgecap edgecap-agent edgecap-coordinator; do
    check "/usr/bin/$b runs" sh -c "/usr/bin/$b --version >/dev/null"
done
for u in agent coordinator; do
    unit=/usr/lib/systemd/system/edgecap-$u.service
    check "$unit is installed" test -f "$unit"
    check "/etc/edgecap/$u.env is a conffile of edgecap-$u" \
        sh -c "dpkg-query -W -f='\${Conffiles}' edgecap-$u | grep -q ' /etc/edgecap/$u.env '"
    check "edgecap-$u.service is neither enabled nor started by the install" \
        test ! -e "/etc/systemd/system/multi-user.target.wants/edgecap-$u.service"
    check "edgecap-$u ships docs/operations.md" test -f "/usr/share/doc/edgecap-$u/operations.md"
done
check "the CLI package installs no unit and no user" \
    sh -c "! dpkg -L edgecap | grep -q systemd && ! getent passwd edgecap"

for u in "${USERS[@]}"; do
    IFS=: read -r _ _ uid gid _ home shell < <(getent passwd "$u") || fail "user $u was not created"
    check "$u is a system user (uid $uid)" test "$uid" -lt 1000
    check "$u cannot log in (shell $shell)" sh -c "case '$shell' in */nologin|*/false) true;; *) false;; esac"
    check "$u's primary group is its own" test "$(getent group "$gid" | cut -d: -f1)" = "$u"
    check "$u is in no other group" test "$(id -Gn "$u")" = "$u"
done

# The units: systemd's own checker, then the least-privilege settings the docs promise.
for u in agent coordinator; do
    unit=/usr/lib/systemd/system/edgecap-$u.service
    if ! systemd-analyze verify "$unit" >"$WORK/verify-$u.log" 2>&1 || grep -q "edgecap-$u" "$WORK/verify-$u.log"; then
        cat "$WORK/verify-$u.log"
        fail "systemd-analyze verify $unit"
    fi
    say "ok: systemd-analyze verify $unit"
done
unit_has() { grep -qxF "$2" "/usr/lib/systemd/system/$1.service"; }
for line in "User=edgecap-agent" "EnvironmentFile=/etc/edgecap/agent.env" \
    "AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN" "CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN" \
    "NoNewPrivileges=yes" "ProtectSystem=strict" "StateDirectory=edgecap/pki edgecap/spool" "PrivateDevices=yes"; do
    check "edgecap-agent.service: $line" unit_has edgecap-agent "$line"
done
for line in "User=edgecap-coordinator" "EnvironmentFile=/etc/edgecap/coordinator.env" "AmbientCapabilities=" \
    "CapabilityBoundingSet=" "NoNewPrivileges=yes" "ProtectSystem=strict" "StateDirectory=edgecap/coordinator"; do
    check "edgecap-coordinator.service: $line" unit_has edgecap-coordinator "$line"
done

# ---- 4. configure as an operator ------------------------------------------------------------
API_PORT=$(free_port)
GRPC_PORT=$(free_port)
METRICS_PORT=$(free_port)
API=https://127.0.0.1:$API_PORT/client/v4
say "configuring: API https://127.0.0.1:$API_PORT, control 127.0.0.1:$GRPC_PORT, agent metrics 127.0.0.1:$METRICS_PORT"

# The PKI and the coordinator's secrets, readable by its group only.
/usr/bin/edgecap pki init --dir /etc/edgecap/pki >/dev/null
/usr/bin/edgecap pki issue --dir /etc/edgecap/pki --coordinator 127.0.0.1 localhost >/dev/null
chgrp -R edgecap-coordinator /etc/edgecap/pki
chmod 0750 /etc/edgecap/pki
chmod 0640 /etc/edgecap/pki/*
install -m 0640 -g edgecap-coordinator /dev/null /etc/edgecap/tokens
echo "$ACCOUNT:$TOKEN" >/etc/edgecap/tokens
install -m 0640 -g edgecap-coordinator /dev/null /etc/edgecap/admin-tokens
echo "$ADMIN_TOKEN" >/etc/edgecap/admin-tokens
# The agents' copy of the CA certificate (public).
install -m 0644 /etc/edgecap/pki/ca.pem /etc/edgecap/ca.pem

setting() { # setting FILE KEY VALUE: sets (or uncomments and sets) KEY in an env file
    local file=$1 key=$2 value=$3
    if grep -qE "^#?$key=" "$file"; then
        sed -i -E "s|^#?$key=.*|$key=$value|" "$file"
    else
        echo "$key=$value" >>"$file"
    fi
}
C=/etc/edgecap/coordinator.env
setting $C EDGECAP_API_LISTEN "127.0.0.1:$API_PORT"
setting $C EDGECAP_GRPC_LISTEN "127.0.0.1:$GRPC_PORT"
setting $C EDGECAP_API_TLS_CERT /etc/edgecap/pki/coordinator.pem
setting $C EDGECAP_API_TLS_KEY /etc/edgecap/pki/coordinator-key.pem
A=/etc/edgecap/agent.env
setting $A EDGECAP_COORDINATORS "https://127.0.0.1:$GRPC_PORT"
setting $A EDGECAP_POP pkg01
setting $A EDGECAP_AGENT_ID pkgtest-agent
setting $A EDGECAP_METRICS_LISTEN "127.0.0.1:$METRICS_PORT"
setting $A EDGECAP_AGENT_OPTS '"--iface lo --sample-rate 1 --lookback-memory-mib 16 --spool-max-mib 64"'

# ---- 5. start the installed binaries as their units would -------------------------------------
unit_value() { # unit_value UNIT KEY: the last KEY= line's value
    sed -n "s/^$2=//p" "/usr/lib/systemd/system/$1.service" | tail -n 1
}
caps_for_setpriv() { # "CAP_NET_RAW CAP_NET_ADMIN" -> "-all,+net_raw,+net_admin"; "" -> "-all"
    local out=-all c
    for c in $1; do out+=",+$(echo "${c#CAP_}" | tr 'A-Z' 'a-z')"; done
    echo "$out"
}
start_unit() { # start_unit NAME LOG: starts edgecap-NAME as its unit describes; sets UNIT_PID
    local unit=edgecap-$1 log=$2
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl start "$unit.service"
        UNIT_PID=$(systemctl show -p MainPID --value "$unit.service")
        return
    fi
    local user group envfile exec umask_ caps bound nnp dirs mode d
    user=$(unit_value "$unit" User)
    group=$(unit_value "$unit" Group)
    envfile=$(unit_value "$unit" EnvironmentFile)
    exec=$(unit_value "$unit" ExecStart)
    umask_=$(unit_value "$unit" UMask)
    caps=$(caps_for_setpriv "$(unit_value "$unit" AmbientCapabilities)")
    bound=$(caps_for_setpriv "$(unit_value "$unit" CapabilityBoundingSet)")
    nnp=$(unit_value "$unit" NoNewPrivileges)
    dirs=$(unit_value "$unit" StateDirectory)
    mode=$(unit_value "$unit" StateDirectoryMode)
    for d in $dirs; do # StateDirectory=: created, owned by the service's user, mode as set
        mkdir -p "/var/lib/$d"
        chown "$user:$group" "/var/lib/$d"
        chmod "${mode:-0755}" "/var/lib/$d"
    done
    # EnvironmentFile=: KEY=VALUE lines, # comments, optional double quotes around the value.
    local -a envs=(PATH=/usr/sbin:/usr/bin:/sbin:/bin)
    local line key value
    while IFS= read -r line; do
        case "$line" in '' | '#'*) continue ;; esac
        key=${line%%=*}
        value=${line#*=}
        value=${value#\"}
        value=${value%\"}
        envs+=("$key=$value")
    done <"$envfile"
    # ExecStart=: a lone $VAR is replaced by its value split on whitespace.
    local -a argv=() words
    read -ra words <<<"$exec"
    local w v
    for w in "${words[@]}"; do
        if [[ $w =~ ^\$([A-Za-z_][A-Za-z0-9_]*)$ ]]; then
            v=""
            for e in "${envs[@]}"; do [ "${e%%=*}" = "${BASH_REMATCH[1]}" ] && v=${e#*=}; done
            # shellcheck disable=SC2206 # splitting is the point
            argv+=($v)
        else
            argv+=("$w")
        fi
    done
    local -a priv=(setpriv "--reuid=$user" "--regid=$group" --init-groups "--inh-caps=$caps"
        "--ambient-caps=$caps" "--bounding-set=$bound")
    [ "$nnp" = yes ] && priv+=(--no-new-privs)
    say "starting $unit: ${priv[*]} env -i ... ${argv[*]}"
    (
        cd /
        umask "${umask_:-0022}"
        exec "${priv[@]}" env -i "${envs[@]}" "${argv[@]}" </dev/null >"$log" 2>&1
    ) &
    UNIT_PID=$!
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 5; i++)); do
        if "$@" >/dev/null 2>&1; then
            say "ok: $what"
            return 0
        fi
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || fail "$what: process $pid exited"; done
        sleep 0.2
    done
    fail "$what: not within ${secs}s"
}

status_field() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

start_unit coordinator "$WORK/coordinator.log"
COORD_PID=$UNIT_PID
PIDS+=("$COORD_PID")
CA=/etc/edgecap/pki/ca.pem
wait_for 60 "the coordinator is ready over HTTPS" curl -sf --cacert $CA "https://127.0.0.1:$API_PORT/readyz"
sleep 0.5
COORD_PROC=$COORD_PID # setpriv and env exec: the same process
check "the coordinator runs as edgecap-coordinator" \
    test "$(status_field "$COORD_PROC" Uid)" = "$(id -u edgecap-coordinator)"
check "the coordinator has no capabilities" test "$(status_field "$COORD_PROC" CapEff)" = 0000000000000000
check "the coordinator's bounding set is empty" test "$(status_field "$COORD_PROC" CapBnd)" = 0000000000000000
check "the coordinator has no_new_privs" test "$(status_field "$COORD_PROC" NoNewPrivs)" = 1
check "the coordinator's state directory belongs to it" \
    test "$(stat -c %U:%a /var/lib/edgecap/coordinator)" = "edgecap-coordinator:700"
check "the coordinator serves /metrics" \
    sh -c "curl -sf --cacert $CA https://127.0.0.1:$API_PORT/metrics | grep -q '^edgecap_agents_connected'"

export EDGECAP_API=$API EDGECAP_CA=$CA EDGECAP_ACCOUNT=$ACCOUNT EDGECAP_TOKEN=$TOKEN
install -m 0640 -g edgecap-agent /dev/null /etc/edgecap/bootstrap-token
EDGECAP_ADMIN_TOKEN=$ADMIN_TOKEN /usr/bin/edgecap admin bootstrap-token create --pops 'pkg*' --ttl 600 \
    >/etc/edgecap/bootstrap-token 2>"$WORK/bootstrap.log" || { cat "$WORK/bootstrap.log"; fail "bootstrap-token create"; }
check "a bootstrap token was made" test -s /etc/edgecap/bootstrap-token

start_unit agent "$WORK/agent.log"
AGENT_PID=$UNIT_PID
PIDS+=("$AGENT_PID")
wait_for 60 "the agent enrolled and is ready" curl -sf "http://127.0.0.1:$METRICS_PORT/readyz"
AGENT_PROC=$AGENT_PID
check "the agent runs as edgecap-agent" test "$(status_field "$AGENT_PROC" Uid)" = "$(id -u edgecap-agent)"
check "the agent's capabilities are NET_RAW and NET_ADMIN (ambient)" \
    test "$(status_field "$AGENT_PROC" CapEff)/$(status_field "$AGENT_PROC" CapAmb)" = 0000000000003000/0000000000003000
check "the agent's bounding set is NET_RAW and NET_ADMIN" test "$(status_field "$AGENT_PROC" CapBnd)" = 0000000000003000
check "the agent has no_new_privs" test "$(status_field "$AGENT_PROC" NoNewPrivs)" = 1
check "the agent made its own key: owned by it, mode 600" \
    test "$(stat -c %U:%a /var/lib/edgecap/pki/agent-key.pem)" = "edgecap-agent:600"
check "the agent's key directory is its own, mode 700" test "$(stat -c %U:%a /var/lib/edgecap/pki)" = "edgecap-agent:700"
check "the agent's spool directory is its own, mode 700" \
    test "$(stat -c %U:%a /var/lib/edgecap/spool)" = "edgecap-agent:700"
wait_for 30 "the coordinator lists the agent of PoP pkg01" sh -c "/usr/bin/edgecap agents | grep -q pkg01"
check "the agent serves /metrics" sh -c "curl -sf http://127.0.0.1:$METRICS_PORT/metrics | grep -q '^edgecap_agent_connected 1'"

# ---- 6. a sample capture through the installed CLI --------------------------------------------
ping -c 5 -i 0.2 127.0.0.1 >/dev/null
sleep 1
# Accounts capture nothing until the operator gives them a scope: this one all of loopback.
EDGECAP_ADMIN_TOKEN=$ADMIN_TOKEN /usr/bin/edgecap admin accounts set "$ACCOUNT" --prefix 127.0.0.0/8 --prefix ::1/128 \
    >/dev/null 2>"$WORK/scope.log" || { cat "$WORK/scope.log"; fail "edgecap admin accounts set"; }
/usr/bin/edgecap capture create --time-limit 60 --packet-limit 100 --protocol 1 --wait >"$WORK/capture.json" 2>"$WORK/capture.log" ||
    { cat "$WORK/capture.log"; fail "edgecap capture create"; }
ID=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["id"])' "$WORK/capture.json")
STATUS=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["status"])' "$WORK/capture.json")
check "sample capture $ID succeeded (status $STATUS)" test "$STATUS" = success
/usr/bin/edgecap capture download "$ID" -o "$WORK/sample.pcap" >/dev/null 2>"$WORK/download.log" ||
    { cat "$WORK/download.log"; fail "edgecap capture download"; }
ICMP=$(tshark -r "$WORK/sample.pcap" -Y icmp 2>/dev/null | wc -l)
ALL=$(tshark -r "$WORK/sample.pcap" 2>/dev/null | wc -l)
check "the downloaded capture holds the pings ($ICMP ICMP packets of $ALL)" test "$ICMP" -ge 5 -a "$ICMP" = "$ALL"

# ---- 7. stop as systemd would (SIGTERM), then remove and purge -------------------------------
stop_unit() { # stop_unit NAME PID
    if [ -d /run/systemd/system ]; then
        systemctl stop "edgecap-$1.service"
        return
    fi
    kill -TERM "$2"
    local rc=0
    wait "$2" || rc=$?
    check "edgecap-$1 stopped cleanly on SIGTERM (exit status $rc)" test "$rc" = 0
}
stop_unit agent "$AGENT_PID"
stop_unit coordinator "$COORD_PID"
PIDS=()

dpkg -r "${PACKAGES[@]}" >"$WORK/dpkg-remove.log" 2>&1 || { cat "$WORK/dpkg-remove.log"; fail "dpkg -r"; }
for p in edgecap-agent edgecap-coordinator; do
    check "$p removed, its configuration kept" test "$(dpkg-query -W -f='${db:Status-Status}' "$p")" = config-files
done
check "edgecap (no configuration) removed entirely" \
    sh -c "! dpkg-query -W -f='\${db:Status-Status}' edgecap 2>/dev/null | grep -qv '^not-installed\$'"
check "the binaries are gone" sh -c '! ls /usr/bin/edgecap /usr/bin/edgecap-agent /usr/bin/edgecap-coordinator 2>/dev/null'
check "the units are gone" sh -c '! ls /usr/lib/systemd/system/edgecap-* 2>/dev/null'
check "the settings stay after dpkg -r" test -f /etc/edgecap/agent.env -a -f /etc/edgecap/coordinator.env

dpkg --purge "${PACKAGES[@]}" >"$WORK/dpkg-purge.log" 2>&1 || { cat "$WORK/dpkg-purge.log"; fail "dpkg --purge"; }
for p in "${PACKAGES[@]}"; do
    check "$p purged" sh -c "! dpkg-query -W -f='\${db:Status-Status}' $p 2>/dev/null | grep -qv '^not-installed$'"
done
for u in "${USERS[@]}"; do
    check "user and group $u are gone" sh -c "! getent passwd $u && ! getent group $u"
done
if [ "$PRIVATE_VARLIB" = 1 ]; then # a mount point: the purge empties it, rmdir cannot remove it
    check "/var/lib/edgecap is empty (the node's key, the spool, the embedded state are gone)" \
        test -z "$(ls -A /var/lib/edgecap)"
else
    check "/var/lib/edgecap is gone (the node's key, the spool, the embedded state)" test ! -e /var/lib/edgecap
fi
LEFT=$(cd /etc/edgecap && find . -mindepth 1 -maxdepth 1 | sort | tr '\n' ' ')
check "/etc/edgecap holds only what the operator put there ($LEFT)" \
    test "$LEFT" = "./admin-tokens ./bootstrap-token ./ca.pem ./pki ./tokens "
rm -rf /etc/edgecap
say "all package checks passed"
