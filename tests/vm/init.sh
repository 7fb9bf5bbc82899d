#!/bin/busybox sh
# PID 1 of a VM test guest. `cargo xtask vm-test` (xtask/src/vm/initramfs.rs)
# packs this file as /init beside busybox, the integration test executable,
# `agent-monitor`, `test-agent` and their shared libraries, then reads the
# VMTEST-* lines below back from the serial console. docs/testing.md lists
# the markers; keep the two in step.

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
# /usr/local/bin holds the few host tools busybox cannot stand in for
# (xtask/src/vm/initramfs.rs says why); it comes first.
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# The result line is what the host waits for: without it the run fails.
finish() {
    echo "VMTEST-RESULT rc=$1"
    echo "VMTEST-END"
    sync
    poweroff -f
}

must() {
    if ! "$@"; then
        echo "VMTEST-ERROR guest setup failed: $*"
        finish 125
    fi
}

must mount -t proc proc /proc
must mount -t sysfs sysfs /sys
must mount -t devtmpfs devtmpfs /dev
must mount -t tmpfs tmpfs /tmp
must mount -t tmpfs tmpfs /run
# The daemon finds cgroup2 via /proc/self/mountinfo; a pure v2 layout here,
# unlike the host's hybrid one.
must mount -t cgroup2 cgroup2 /sys/fs/cgroup
must mount -t bpf bpf /sys/fs/bpf
must mount -t securityfs securityfs /sys/kernel/security
must mount -t tracefs tracefs /sys/kernel/tracing
must ip link set lo up
# The repository's data files, at the host path the tests were built in
# (xtask/src/vm/initramfs.rs says why); after the mounts above, which would
# hide them if packed there directly (a clone under /tmp).
repo=$(cat /opt/vmtest/repo-path)
must mkdir -p "$repo"
must mount -o bind /opt/vmtest/repo "$repo"
hostname vmtest

echo "VMTEST-BEGIN"
echo "VMTEST-KERNEL $(uname -r)"
echo "VMTEST-LSM $(cat /sys/kernel/security/lsm)"

export HOME=/root TMPDIR=/tmp NO_COLOR=1 RUST_BACKTRACE=1
export AGENT_MONITOR_BIN=/opt/vmtest/agent-monitor
export TEST_AGENT_BIN=/opt/vmtest/test-agent
export AGENT_MONITOR_PREVIOUS_BIN=/opt/vmtest/agent-monitor-previous-layout
export AGENT_MONITOR_SKIP_FILE=/run/vmtest-skips
# Booted with bpf in lsm=: the daemon must enforce file and exec with BPF
# LSM here, and the tests fail if it fell back to kill.
case " $(cat /proc/cmdline) " in
*" lsm="*bpf*) export AGENT_MONITOR_EXPECT_LSM=1 ;;
esac
cd /tmp

# Start the daemon once on its own so the console shows which mechanism each
# hook got, and the daemon's own error (verifier log included) if it cannot
# start, independently of how the tests report it.
mkdir -p /run/probe
"$AGENT_MONITOR_BIN" daemon --control-socket /run/probe/control.sock --events /run/probe/events.jsonl \
    --metrics-addr 127.0.0.1:9464 --cgroup-parent vmtest-probe --stop-enforcement-on-exit 2>/run/probe/stderr &
probe=$!
started=$(cut -d' ' -f1 /proc/uptime)
i=0
while [ ! -S /run/probe/control.sock ] && kill -0 "$probe" 2>/dev/null && [ "$i" -lt 600 ]; do
    sleep 0.1
    i=$((i + 1))
done
if [ -S /run/probe/control.sock ]; then
    echo "VMTEST-PROBE-READY daemon ready in $(awk -v s="$started" '{printf "%.1f", $1 - s}' /proc/uptime) s"
    kill -TERM "$probe"
    wait "$probe"
    grep 'mechanism=' /run/probe/stderr | sed 's/^/VMTEST-MECH /'
    grep 'started in' /run/probe/stderr | sed 's/^/VMTEST-STARTUP /'
else
    kill -KILL "$probe" 2>/dev/null
    wait "$probe"
    echo "VMTEST-PROBE-FAILED the daemon did not start; its stderr:"
    sed 's/^/VMTEST-PROBE-LOG /' /run/probe/stderr
fi

echo "VMTEST-TESTS-BEGIN"
if [ -n "$VMTEST_REPEAT" ]; then
    # A flake hunt (docs/testing.md): the filtered tests VMTEST_REPEAT times,
    # the count of failed runs at the end; any failure fails the guest.
    failed=0
    i=0
    while [ "$i" -lt "$VMTEST_REPEAT" ]; do
        i=$((i + 1))
        /opt/vmtest/integration --test-threads=1 --color never --nocapture $VMTEST_FILTER || failed=$((failed + 1))
    done
    echo "VMTEST-REPEAT runs=$VMTEST_REPEAT failed=$failed"
    rc=$([ "$failed" -eq 0 ] && echo 0 || echo 1)
else
    /opt/vmtest/integration --test-threads=1 --color never $VMTEST_FILTER
    rc=$?
fi
echo "VMTEST-TESTS-END"
if [ -f "$AGENT_MONITOR_SKIP_FILE" ]; then
    sed 's/^/VMTEST-SKIP /' "$AGENT_MONITOR_SKIP_FILE"
fi
finish "$rc"
