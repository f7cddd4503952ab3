#!/bin/bash
# The checks are called by name (check_$c), which shellcheck cannot follow.
# shellcheck disable=SC2317
# The systemd VM test's driver, run by hil-driver.service inside the VM once systemd has booted (see
# tests/hil/systemd.sh and docs/hil.md). It installs the package as on a robot, enables the service against
# vivid and checks what systemd does with it:
#
#   ready       active (running) only after READY=1; user ocellus; hardening in force; SCHED_FIFO threads under
#               LimitRTPRIO; the segment mode 0640 and readable by a member of group ocellus (a C reader)
#   watchdog    a hung inference thread: WATCHDOG=1 stops, systemd kills and restarts the service; the C reader
#               sees the writer go stale within two heartbeat periods and follows the new generation
#   kill        kill -9 of the main process: restarted; the reader follows
#   stop        systemctl stop: exit status 0, segment marked stopped, camera released
#   badconfig   a misspelt key: exit code 2, not restarted
#   disconnect  vivid's Disconnect: the service reopens the camera itself (no restart, same MainPID)
#   journal     journald holds native entries with fields (CAMERA=0 STAGE=encoder OVERRUN_MS, PRIORITY per level)
#               and the status lines without escape codes
#
# Every check prints "hil-systemd: ok: ..." or "hil-systemd: FAIL: ..."; the verdict is the number of failures,
# printed as "HIL-VERDICT rc=N" and, on amd64, written to qemu's isa-debug-exit port.
set -u
# shellcheck source=/dev/null
. /hil/env
CHECKS=${HIL_CHECKS:-ready watchdog kill stop badconfig disconnect journal}
UNIT=ocellus.service
CONF=/etc/ocellus/ocellus.toml
RUN=/run/hil
READER_LOG=$RUN/reader.log
mkdir -p "$RUN"

failures=0
not_run=0
say() { echo "hil-systemd: $*"; }
ok() { say "ok: $*"; }
fail() {
    say "FAIL: $*"
    failures=$((failures + 1))
}
# Seconds since boot (CLOCK_MONOTONIC here: the VM never suspends), as a decimal.
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
prop() { systemctl show -P "$1" "$UNIT"; }
state() { echo "$(prop ActiveState)/$(prop SubState)"; }

verdict() {
    local rc=$1
    [ "$rc" -le 100 ] || rc=100
    echo "HIL-VERDICT rc=$rc"
    # Straight to the console too: the journal's copy can be lost to the forced power-off.
    echo "HIL-VERDICT rc=$rc" >/dev/console
    sleep 1
    if [ "$HIL_ARCH" = amd64 ]; then
        # qemu's isa-debug-exit at port 0xf4: qemu exits with (value << 1) | 1.
        printf "\\$(printf %03o "$rc")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    fi
    systemctl poweroff --force --force
    exit "$rc"
}

# wait_for SECONDS COMMAND...: runs COMMAND every 0.2 s until it succeeds; fails after SECONDS.
wait_for() {
    local limit=$1 t0
    shift
    t0=$(now)
    until "$@"; do
        if awk -v a="$t0" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then return 1; fi
        sleep 0.2
    done
}

# The reader's log from line N on.
reader_from() { tail -n +"$1" "$READER_LOG"; }
reader_lines() { wc -l <"$READER_LOG"; }
# reader_has N PATTERN: a line from line N on matches the extended regex.
reader_has() { reader_from "$1" | grep -qE "$2"; }
# The value of KEY in the first line from line N on that matches PATTERN.
reader_value() { reader_from "$1" | grep -E "$2" | head -1 | sed -n "s/.* $3=\([^ ]*\).*/\1/p;s/^$3=\([^ ]*\).*/\1/p" | head -1; }
# Samples flow: two ticks from line N on with state ok and a sequence that advanced.
reader_flowing() {
    reader_from "$1" | awk '/event=tick state=ok/ { for (i = 1; i <= NF; i++) if ($i ~ /^seq=/) { s = substr($i, 5) + 0; if (seen && s > first) { found = 1; exit } if (!seen) { seen = 1; first = s } } } END { exit !found }'
}
journal_cursor() { journalctl -n 0 --show-cursor -q | sed -n 's/^-- cursor: //p'; }
unit_journal() { journalctl -q -u "$UNIT" --after-cursor="$1" "${@:2}"; }

dump() {
    say "--- systemctl status ocellus"
    systemctl status --no-pager -n 0 "$UNIT" 2>&1 | sed 's/^/    /'
    say "--- journalctl -u ocellus (last 25)"
    journalctl -q -u "$UNIT" -n 25 --no-pager -o short-monotonic 2>&1 | sed 's/^/    /'
    say "--- reader (last 12)"
    tail -n 12 "$READER_LOG" 2>/dev/null | sed 's/^/    /'
}

start_reader() {
    # The control loop's user: a member of group ocellus (not of video), as docs/deploy.md tells it.
    # HIL_READER_ARGS on the host (e.g. --no-follow, to show the follow checks fail) arrive in /hil/reader-args.
    # shellcheck disable=SC2046
    setpriv --reuid=robot --regid=robot --init-groups /hil/shm-follow $(cat /hil/reader-args 2>/dev/null) /ocellus \
        >>"$READER_LOG" 2>&1 &
    READER_PID=$!
}

running_with_samples() {
    [ "$(state)" = active/running ] || return 1
    wait_for 120 reader_flowing "$(reader_lines)"
}

# Brings the service up with the test configuration if a check before left it down.
ensure_running() {
    if [ "$(state)" != active/running ]; then
        cp /hil/good.toml.installed "$CONF"
        systemctl reset-failed "$UNIT" 2>/dev/null
        systemctl start "$UNIT" || { fail "could not start the service for the next check"; dump; return 1; }
    fi
    [ -n "${READER_PID:-}" ] && kill -0 "$READER_PID" 2>/dev/null || start_reader
    wait_for 120 reader_flowing "$(reader_lines)" || { fail "no samples reach the reader"; dump; return 1; }
}

# --- Setup: the robot's installation steps (docs/deploy.md) ---------------------------------------------------
T_BOOT=$(now)
systemctl is-system-running --wait >/dev/null
say "system up after $(now) s since boot ($(systemctl is-system-running)); arch $HIL_ARCH; checks: $CHECKS"

t=$(now)
if DEBIAN_FRONTEND=noninteractive dpkg -i /hil/ocellus.deb >"$RUN/dpkg.log" 2>&1; then
    ok "dpkg -i ocellus.deb ($(since "$t") s)"
else
    fail "dpkg -i ocellus.deb"
    sed 's/^/    /' "$RUN/dpkg.log"
    verdict 100
fi

# Cameras as systemd devices: udev tags only some subsystems "systemd", not video4linux, so a unit cannot wait
# for a camera's .device until a rule does (the example rules file carries that rule).
udevadm settle
DEV=""
for link in /dev/v4l/by-path/*; do
    [ "$(readlink -f "$link")" = /dev/video0 ] && DEV=$link
done
if [ -n "$DEV" ]; then ok "udev made the by-path name $DEV -> /dev/video0"; else
    fail "no /dev/v4l/by-path link to vivid's /dev/video0 (udev not running?); using /dev/video0"
    ls -lR /dev/v4l 2>&1 | sed 's/^/    /'
    DEV=/dev/video0
fi
DEVUNIT=$(systemd-escape -p --suffix=device "$DEV")
before=$(systemctl show -P ActiveState "$DEVUNIT")
install -m 0644 /hil/99-ocellus-cameras.rules /etc/udev/rules.d/99-ocellus-cameras.rules
udevadm control --reload
udevadm trigger --subsystem-match=video4linux --action=add
udevadm settle
after=$(systemctl show -P ActiveState "$DEVUNIT")
if [ "$after" = active ]; then
    ok "$DEVUNIT is active with bsp/udev/99-ocellus-cameras.rules installed (without it: $before)"
else
    fail "$DEVUNIT is '$after' with the rules installed (before: $before)"
fi

sed "s|@DEVICE@|$DEV|" /hil/good.toml >/hil/good.toml.installed
sed "s|@DEVICE@|$DEV|" /hil/stall.toml >/hil/stall.toml.installed
sed "s|@DEVICE@|$DEV|" /hil/bad.toml >/hil/bad.toml.installed
cp /hil/good.toml.installed "$CONF"
if out=$(setpriv --reuid=ocellus --regid=ocellus --init-groups ocellus check --config "$CONF" 2>&1); then
    ok "ocellus check --config $CONF as user ocellus"
else
    fail "ocellus check as user ocellus"
    printf '%s\n' "$out" | sed 's/^/    /'
fi
useradd --system --no-create-home --shell /usr/sbin/nologin robot
usermod -aG ocellus robot

# The deploy.md drop-in: wait for the camera's device. The status interval is shortened from the unit's 60 s so
# the journal check need not wait a minute for the deadline lines.
mkdir -p /etc/systemd/system/ocellus.service.d
cat >/etc/systemd/system/ocellus.service.d/hil.conf <<EOF
[Unit]
Requires=$DEVUNIT
After=$DEVUNIT

[Service]
ExecStart=
ExecStart=/usr/bin/ocellus run --config /etc/ocellus/ocellus.toml --status-interval 2
EOF
if [ -s /hil/extra-dropin.conf ]; then
    cp /hil/extra-dropin.conf /etc/systemd/system/ocellus.service.d/zz-extra.conf
    say "extra drop-in installed (HIL_DROPIN):"
    sed 's/^/    /' /hil/extra-dropin.conf
fi
systemctl daemon-reload

# --- 1. ready ---------------------------------------------------------------------------------------------------
check_ready() {
    local t0 saw="" pid cur s
    systemctl enable "$UNIT" 2>/dev/null
    [ "$(systemctl is-enabled "$UNIT")" = enabled ] && ok "systemctl enable ocellus" || fail "ocellus is not enabled"
    cur=$(journal_cursor)
    systemctl log-level debug
    t0=$(now)
    systemctl start --no-block "$UNIT"
    # Until READY=1 the unit must stay activating, with its main process already running.
    while :; do
        s=$(state)
        pid=$(prop MainPID)
        [ "$s" = activating/start ] && [ "$pid" != 0 ] && saw="$saw activating/start(pid $pid)"
        case "$s" in active/running | failed/* | inactive/*) break ;; esac
        if awk -v a="$t0" -v b="$(now)" 'BEGIN { exit !(b - a > 300) }'; then break; fi
        sleep 0.2
    done
    systemctl log-level info
    pid=$(prop MainPID)
    if [ "$s" != active/running ]; then
        fail "the service did not reach active (running): $s"
        dump
        return
    fi
    local exec_us active_us
    exec_us=$(prop ExecMainStartTimestampMonotonic)
    active_us=$(prop ActiveEnterTimestampMonotonic)
    say "started in $(since "$t0") s; process start to active: $(((active_us - exec_us) / 1000)) ms"
    [ -n "$saw" ] && ok "activating (start) with the main process running before READY:$(echo "$saw" | awk '{print $1, $2, $3}')" ||
        fail "never saw activating (start) with a main process"
    # systemd's own order (debug log of PID 1): the READY=1 notification from the main process, then running.
    local j ready_line running_line
    j=$(journalctl -q _PID=1 --after-cursor="$cur" -o cat)
    ready_line=$(printf '%s\n' "$j" | grep -n "ocellus.service: Got notification message from PID $pid (READY=1" | head -1 | cut -d: -f1)
    running_line=$(printf '%s\n' "$j" | grep -n "ocellus.service: Changed start -> running" | head -1 | cut -d: -f1)
    if [ -n "$ready_line" ] && [ -n "$running_line" ] && [ "$ready_line" -lt "$running_line" ]; then
        ok "PID 1 logged READY=1 from PID $pid, then start -> running"
    else
        fail "READY=1 (line ${ready_line:-none}) before start -> running (line ${running_line:-none}) in PID 1's log"
    fi

    local user groups
    user=$(ps -o user= -p "$pid" | tr -d ' ')
    groups=$(ps -o supgrp= -p "$pid" | tr -d ' ')
    [ "$user" = ocellus ] && ok "runs as user ocellus (supplementary groups $groups)" || fail "runs as '$user'"
    case ",$groups," in *,video,*) ;; *) fail "not in group video: $groups" ;; esac
    local st
    st=$(cat "/proc/$pid/status")
    if printf '%s\n' "$st" | grep -qE '^NoNewPrivs:\s+1$' && printf '%s\n' "$st" | grep -qE '^Seccomp:\s+2$' &&
        printf '%s\n' "$st" | grep -qE '^CapEff:\s+0+$' && printf '%s\n' "$st" | grep -qE '^CapBnd:\s+0+$'; then
        ok "hardening in the kernel: NoNewPrivs 1, seccomp filter mode 2, no effective or bounding capabilities"
    else
        fail "hardening: $(printf '%s\n' "$st" | grep -E '^(NoNewPrivs|Seccomp|CapEff|CapBnd):' | tr '\n' ' ')"
    fi
    local policy allow
    policy=$(prop DevicePolicy)
    # One entry per line; ProtectClock= adds "char-rtc r" beside the unit's own.
    allow=$(prop DeviceAllow | tr '\n' ',')
    [ "$policy" = closed ] && printf '%s' "$allow" | grep -q 'char-video4linux rw' &&
        ok "DevicePolicy=$policy DeviceAllow=$allow (and the camera streams: see the reader below)" ||
        fail "DevicePolicy=$policy DeviceAllow=$allow"
    local rtlimit
    rtlimit=$(awk '/^Max realtime priority/ {print $4 "/" $5}' "/proc/$pid/limits")
    [ "$rtlimit" = 80/80 ] && ok "LimitRTPRIO: the process's RLIMIT_RTPRIO is $rtlimit" || fail "RLIMIT_RTPRIO $rtlimit"
    local threads cam inf
    threads=$(ps -L -o comm=,cls=,rtprio= -p "$pid")
    cam=$(printf '%s\n' "$threads" | awk '$1 == "ocellus-cam0" {print $2, $3}')
    inf=$(printf '%s\n' "$threads" | awk '$1 == "ocellus-infer" {print $2, $3}')
    if [ "$cam" = "FF 20" ] && [ "$inf" = "FF 10" ]; then
        ok "SCHED_FIFO as [realtime] asks: ocellus-cam0 $cam, ocellus-infer $inf (ps -L -o cls,rtprio)"
    else
        fail "threads' scheduling: ocellus-cam0 '$cam' (want FF 20), ocellus-infer '$inf' (want FF 10)"
        printf '%s\n' "$threads" | sed 's/^/    /'
    fi
    local tid
    tid=$(ps -L -o tid=,comm= -p "$pid" | awk '$2 == "ocellus-cam0" {print $1}')
    [ -n "$tid" ] && say "chrt -p $tid: $(chrt -p "$tid" | tr '\n' ' ')"

    local shm
    shm=$(stat -c '%a %U %G' /dev/shm/ocellus 2>&1)
    [ "$shm" = "640 ocellus ocellus" ] && ok "/dev/shm/ocellus: mode $shm" || fail "/dev/shm/ocellus: $shm"
    start_reader
    if wait_for 120 reader_flowing 1; then
        ok "a member of group ocellus (user robot, not in video) reads samples through shm.h: $(reader_from 1 | grep 'event=tick state=ok' | tail -1 | cut -d' ' -f2-)"
    else
        fail "the C reader (user robot, group ocellus) reads no samples"
        dump
    fi
    if out=$(setpriv --reuid=nobody --regid=nogroup --clear-groups /hil/shm-follow --once /ocellus 2>&1); then
        fail "user nobody (not in group ocellus) could read the segment: $out"
    else
        ok "user nobody (not in group ocellus) cannot open it: $(printf '%s' "$out" | cut -d' ' -f3-)"
    fi
}

# --- 2. watchdog ------------------------------------------------------------------------------------------------
check_watchdog() {
    ensure_running || return
    local cur line0 p2 n2 t0 p3 n3
    cur=$(journal_cursor)
    cp /hil/stall.toml.installed "$CONF"
    systemctl restart "$UNIT"
    # The stalled process has read its configuration: the next start gets the good one again, so exactly one
    # watchdog restart follows (otherwise every restart would stall again until StartLimitBurst).
    cp /hil/good.toml.installed "$CONF"
    p2=$(prop MainPID)
    n2=$(prop NRestarts)
    line0=$(reader_lines)
    t0=$(now)
    say "stalling instance: pid $p2 (stall-after-frames = 3), NRestarts $n2, WatchdogSec $(prop WatchdogUSec)"
    if ! wait_for 240 sh -c "[ \"\$(systemctl show -P MainPID $UNIT)\" != $p2 ] && [ \"\$(systemctl show -P SubState $UNIT)\" = running ]"; then
        fail "no watchdog restart within 240 s of the stall (state $(state), NRestarts $(prop NRestarts), Result $(prop Result))"
        dump
        return
    fi
    p3=$(prop MainPID)
    n3=$(prop NRestarts)
    say "restarted as pid $p3 after $(since "$t0") s"
    local j
    j=$(unit_journal "$cur" -o cat)
    if printf '%s\n' "$j" | grep -q "Watchdog timeout"; then
        ok "systemd: $(printf '%s\n' "$j" | grep -m1 'Watchdog timeout' | sed 's/^ocellus.service: //'); $(printf '%s\n' "$j" | grep -m1 'Main process exited' | sed 's/^ocellus.service: //')"
    else
        fail "no 'Watchdog timeout' for ocellus in the journal"
    fi
    [ "$n3" -eq $((n2 + 1)) ] && ok "NRestarts $n2 -> $n3" || fail "NRestarts $n2 -> $n3 (want $((n2 + 1)))"

    # What the C reader, never restarted, saw of it.
    if ! wait_for 120 reader_flowing "$line0"; then :; fi
    local t_flag t_exit t_stale t_remap period hb hbms gen_new
    # The last change of the camera's flags before the writer died: stalled (bit 19) set. (At TCG's ~1 fps the
    # flag also blinks between frames; what counts is that it was on when the process was killed.)
    t_flag=$(reader_from "$line0" | awk -v pid="$p2" '
        / event=flags / { f = $3; sub(/flags=/, "", f); on = (f ~ /^0x[89a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]$/); t = $1 }
        $0 ~ ("event=writer-exit pid=" pid "$") { if (on) { sub(/t=/, "", t); print t } exit }')
    t_exit=$(reader_value "$line0" "event=writer-exit pid=$p2\$" t)
    # The first stale after the writer's exit (under TCG the heartbeat can also be late for a moment before it).
    local exit_line
    exit_line=$(reader_from "$line0" | grep -nE "event=writer-exit pid=$p2\$" | head -1 | cut -d: -f1)
    exit_line=$((line0 + ${exit_line:-1} - 1))
    t_stale=$(reader_value "$exit_line" 'event=state state=stale' t)
    hb=$(reader_value "$exit_line" 'event=state state=stale' hb_age_ms)
    t_remap=$(reader_value "$line0" "event=remap .*pid=$p3\$" t)
    period=$(reader_value 1 'period_ms=' period_ms)
    gen_new=$(reader_value "$line0" "event=remap .*pid=$p3\$" gen)
    [ -n "$t_flag" ] && ok "reader: the status block flagged the camera stalled at t=$t_flag (heartbeat still beating) until the process died" ||
        fail "reader: no stalled flag during the stall"
    if [ -n "$t_exit" ] && [ -n "$t_stale" ]; then
        local dt limit
        dt=$(awk -v a="$t_exit" -v b="$t_stale" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
        limit=$((2 * ${period:-100}))
        # shm.h calls the writer stale once its heartbeat is two periods old; what the reader adds is its own
        # 10 ms poll and the VM's scheduling. Pass when the heartbeat's age at that moment is within one more
        # period of the two (the figures are printed either way).
        hbms=$(printf '%.0f' "${hb:-99999}")
        if [ "$hbms" -le $((limit + ${period:-100})) ]; then
            ok "reader: writer pid $p2 gone at t=$t_exit, stale at t=$t_stale (${dt} ms later), heartbeat then $hb ms old: stale at two heartbeat periods ($limit ms) + ${hbms}-${limit} ms of polling"
        else
            fail "reader: stale only when the heartbeat was $hb ms old (two periods: $limit ms; ${dt} ms after the exit)"
        fi
    else
        fail "reader: writer exit (t=${t_exit:-none}) or stale state (t=${t_stale:-none}) not seen"
    fi
    if [ -n "$t_remap" ] && reader_flowing "$line0" && kill -0 "$READER_PID" 2>/dev/null; then
        ok "reader (same process, pid $READER_PID) followed the new generation $gen_new of pid $p3 at t=$t_remap; samples flow again"
    else
        fail "reader did not follow the restarted writer (remap t=${t_remap:-none})"
        dump
    fi
    say "reader timeline: $(reader_from "$line0" | grep -vE 'event=tick' | cut -d' ' -f1-4 | tr '\n' ';')"
}

# --- 3. kill -9 ---------------------------------------------------------------------------------------------------
check_kill() {
    ensure_running || return
    local p n line0 t0 p2 n2
    p=$(prop MainPID)
    n=$(prop NRestarts)
    line0=$(reader_lines)
    t0=$(now)
    kill -9 "$p"
    if ! wait_for 180 sh -c "[ \"\$(systemctl show -P MainPID $UNIT)\" != $p ] && [ \"\$(systemctl show -P SubState $UNIT)\" = running ]"; then
        fail "kill -9 $p: not restarted within 180 s (state $(state), Result $(prop Result))"
        dump
        return
    fi
    p2=$(prop MainPID)
    n2=$(prop NRestarts)
    [ "$n2" -eq $((n + 1)) ] && ok "kill -9 $p: restarted as pid $p2 after $(since "$t0") s, NRestarts $n -> $n2" ||
        fail "kill -9: NRestarts $n -> $n2"
    if wait_for 120 reader_flowing "$line0" && reader_has "$line0" "event=writer-exit pid=$p\$" &&
        reader_has "$line0" "event=remap .*pid=$p2\$"; then
        ok "reader saw pid $p go and followed pid $p2"
    else
        fail "reader did not follow the restart after kill -9"
        dump
    fi
}

# --- 3b. stop ---------------------------------------------------------------------------------------------------
check_stop() {
    ensure_running || return
    local p line0 t0
    p=$(prop MainPID)
    line0=$(reader_lines)
    t0=$(now)
    systemctl stop "$UNIT"
    local code status result
    code=$(prop ExecMainCode)
    status=$(prop ExecMainStatus)
    result=$(prop Result)
    # ExecMainCode 1 = CLD_EXITED (not killed by a signal).
    [ "$code:$status:$result" = "1:0:success" ] &&
        ok "systemctl stop ($(since "$t0") s): pid $p exited with status 0, Result=success, $(state)" ||
        fail "systemctl stop: ExecMainCode $code ExecMainStatus $status Result $result"
    if wait_for 10 reader_has "$line0" 'event=state state=stopped'; then
        ok "reader: the segment is marked stopped ($(reader_from "$line0" | grep -m1 'state=stopped' | cut -d' ' -f1,3))"
    else
        fail "reader did not see the segment stopped"
    fi
    [ ! -e /dev/shm/ocellus ] && ok "the segment's name is removed" || fail "/dev/shm/ocellus is still there"
    local holders=""
    for fd in /proc/[0-9]*/fd/*; do
        [ "$(readlink "$fd" 2>/dev/null)" = /dev/video0 ] && holders="$holders $fd"
    done
    [ -z "$holders" ] && ok "no process holds /dev/video0" || fail "/dev/video0 still open:$holders"
    if out=$(v4l2-ctl -d "$DEV" --stream-mmap --stream-count=3 2>&1); then
        ok "the camera streams for another user (v4l2-ctl --stream-mmap --stream-count=3)"
    else
        fail "v4l2-ctl cannot stream after the stop: $(printf '%s' "$out" | tail -n 2)"
    fi
}

# --- 4. a bad configuration -------------------------------------------------------------------------------------
check_badconfig() {
    local cur n
    [ "$(state)" = active/running ] && systemctl stop "$UNIT"
    cp /hil/bad.toml.installed "$CONF"
    systemctl reset-failed "$UNIT" 2>/dev/null
    cur=$(journal_cursor)
    if systemctl start "$UNIT" 2>/dev/null; then fail "systemctl start succeeded with a bad configuration"; fi
    n=$(prop NRestarts)
    local status result
    status=$(prop ExecMainStatus)
    result=$(prop Result)
    [ "$status:$result" = "2:exit-code" ] && ok "a misspelt key: exit status 2, Result=exit-code" ||
        fail "bad configuration: ExecMainStatus $status Result $result (want 2, exit-code)"
    # RestartSec=2s: give a restart ample time to happen.
    sleep 6
    local s n2
    s=$(state)
    n2=$(prop NRestarts)
    [ "$s" = failed/failed ] && [ "$n2" = "$n" ] && [ "$(prop MainPID)" = 0 ] &&
        ok "not restarted (RestartPreventExitStatus=2): $s 6 s later, NRestarts $n2" ||
        fail "after a bad configuration: $s, NRestarts $n -> $n2"
    local msg
    msg=$(unit_journal "$cur" -o cat | grep -m1 'pixel-fromat')
    [ -n "$msg" ] && ok "the journal names the key: $msg" || fail "the journal does not name the misspelt key"
    cp /hil/good.toml.installed "$CONF"
}

# --- 5. vivid's Disconnect --------------------------------------------------------------------------------------
check_disconnect() {
    ensure_running || return
    local cur p n line0 r0 t0
    cur=$(journal_cursor)
    p=$(prop MainPID)
    n=$(prop NRestarts)
    line0=$(reader_lines)
    r0=$(reader_from 1 | grep 'event=reconnects' | tail -1 | sed 's/.*n=//')
    t0=$(now)
    # From a second handle that v4l2-ctl closes at once, as tests/hil.rs does: vivid re-registers its node when
    # the last handle closes, i.e. when ocellus closes its own on ENODEV (docs/hil.md).
    v4l2-ctl -d "$DEV" -c disconnect=1 || fail "v4l2-ctl -c disconnect=1 failed"
    if wait_for 60 reader_has "$line0" "event=reconnects n=$((r0 + 1))\$" && wait_for 120 reader_flowing "$line0"; then
        ok "reader: reconnects $r0 -> $((r0 + 1)) and samples flow again ($(since "$t0") s)"
    else
        fail "no reconnect seen by the reader after Disconnect (reconnects still $r0)"
        dump
    fi
    local j
    j=$(unit_journal "$cur" -o cat)
    printf '%s\n' "$j" | grep -q "camera disconnected" && printf '%s\n' "$j" | grep -q "camera reopened" &&
        ok "journal: camera disconnected, camera reopened" || fail "journal lacks 'camera disconnected' / 'camera reopened'"
    [ "$(prop MainPID)" = "$p" ] && [ "$(prop NRestarts)" = "$n" ] &&
        ok "reopened by the running service: same MainPID $p, NRestarts $n" ||
        fail "Disconnect restarted the service: MainPID $p -> $(prop MainPID), NRestarts $n -> $(prop NRestarts)"
}

# --- 6. journald --------------------------------------------------------------------------------------------------
# Under systemd, ocellus's default logging.format ("auto") sees that stderr is the journal (JOURNAL_STREAM) and
# logs through journald's native protocol: each event's fields are journal fields and its level the PRIORITY.
# good.toml's 1 ms encoder budget makes every frame late under TCG, so "deadline missed" entries come every second.
check_journal() {
    ensure_running || return
    local p e s
    p=$(prop MainPID)
    sleep 5
    e=$(journalctl -q -u "$UNIT" _PID="$p" CAMERA=0 STAGE=encoder -n 1 -o json)
    if printf '%s' "$e" | grep -q '"MESSAGE":"deadline missed"' &&
        printf '%s' "$e" | grep -qE '"OVERRUN_MS":"[0-9.]+"' &&
        printf '%s' "$e" | grep -qE '"LATE_TOTAL":"[0-9]+"' &&
        printf '%s' "$e" | grep -q '"PRIORITY":"4"' &&
        printf '%s' "$e" | grep -q '"SYSLOG_IDENTIFIER":"ocellus"'; then
        ok "journalctl -u ocellus CAMERA=0 STAGE=encoder: $(printf '%s' "$e" |
            grep -oE '"(MESSAGE|CAMERA|STAGE|LATE|LATE_TOTAL|OVERRUN_MS|PRIORITY)":"[^"]*"' | tr '\n' ' ')"
    else
        fail "no native journal entry with CAMERA=0 STAGE=encoder, OVERRUN_MS, LATE_TOTAL and PRIORITY=4 (warning)"
        say "    newest entry of the unit: $(journalctl -q -u "$UNIT" -n 1 -o json)"
    fi
    # An info event (PRIORITY 5, notice: tracing-journald maps INFO there) with the camera as a field.
    s=$(journalctl -q -u "$UNIT" _PID="$p" CAMERA=0 PRIORITY=5 -o cat | grep -m1 -F 'camera started')
    [ -n "$s" ] && ok "journalctl -u ocellus CAMERA=0 PRIORITY=5: $s" ||
        fail "no 'camera started' entry with CAMERA=0 and PRIORITY=5 for the running instance"
    # The live status line is plain text on stderr (the journal's stream): no colour escapes in it.
    s=$(journalctl -q -u "$UNIT" _PID="$p" -o cat | grep -m1 '^fps ')
    if [ -n "$s" ] && ! printf '%s' "$s" | grep -q "$(printf '\033')"; then
        ok "status line in the journal, no escape codes: $s"
    else
        fail "no status line of the running instance in the journal, or escape codes in it: $s"
    fi
}

for c in $CHECKS; do
    t=$(now)
    say "=== $c"
    "check_$c"
    say "=== $c took $(since "$t") s"
done

[ -n "${READER_PID:-}" ] && kill "$READER_PID" 2>/dev/null
say "driver done after $(since "$T_BOOT") s: $failures failed, $not_run not run"
[ "$failures" -eq 0 ] || dump
verdict "$failures"
