#!/usr/bin/env bash
# Stop a node started by es/start.sh: send SIGTERM to the pid in the pid file
# (the launcher's shutdown hook closes the node) and wait until it has exited.
set -euo pipefail

ES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$ES_DIR")

usage() {
    cat <<EOF_USAGE
usage: es/stop.sh [--data-dir DIR] [--pid-file FILE] [--timeout SECONDS]

  --data-dir DIR     node home given to es/start.sh [ES_DATA_DIR, default REPO/.es]
  --pid-file FILE    pid file written by es/start.sh [ES_PID_FILE, default DATA_DIR/node.pid]
  --timeout SECONDS  max wait for the process to exit [ES_STOP_TIMEOUT, default 60]

Exits 0 when the node has stopped or was not running, 1 when it is still
running after the timeout (then kill -KILL the pid it prints).
EOF_USAGE
}

die() {
    echo "es/stop.sh: $*" >&2
    exit 1
}

data_dir=${ES_DATA_DIR:-$REPO_ROOT/.es}
pid_file=${ES_PID_FILE:-}
timeout=${ES_STOP_TIMEOUT:-60}

while (($# > 0)); do
    case "$1" in
        --data-dir) data_dir=${2:?--data-dir needs a value}; shift 2 ;;
        --pid-file) pid_file=${2:?--pid-file needs a value}; shift 2 ;;
        --timeout) timeout=${2:?--timeout needs a value}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ $timeout =~ ^[0-9]+$ ]] || die "invalid timeout: $timeout (expected whole seconds)"
pid_file=${pid_file:-$data_dir/node.pid}

if [[ ! -f $pid_file ]]; then
    echo "es/stop.sh: no pid file at $pid_file, nothing to stop" >&2
    exit 0
fi
pid=$(<"$pid_file")
[[ $pid =~ ^[0-9]+$ ]] || die "invalid pid file $pid_file: expected a number, found '$pid'"

if ! kill -0 "$pid" 2>/dev/null; then
    echo "es/stop.sh: pid $pid is not running, removing stale $pid_file" >&2
    rm -f "$pid_file"
    exit 0
fi
# Guard against a pid that the kernel has since reused for another program.
if [[ -r /proc/$pid/cmdline ]] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'org\.elasticsearch\.node\.Eta1Node'; then
    die "pid $pid from $pid_file is not an Eta1Node process; remove the pid file if the node is gone"
fi

kill -TERM "$pid"
deadline=$((SECONDS + timeout))
while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
        die "node (pid $pid) still running ${timeout}s after SIGTERM; kill -KILL $pid to force it"
    fi
    sleep 0.2
done
rm -f "$pid_file"
echo "es/stop.sh: node (pid $pid) stopped" >&2
