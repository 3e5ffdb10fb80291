#!/usr/bin/env bash
# Start a single-node Elasticsearch (see es/README.md) in the background on
# 127.0.0.1, wait until its cluster health is yellow or green, and print its
# URL as the only line on stdout. Progress and errors go to stderr.
set -euo pipefail

ES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$ES_DIR")
MAIN_CLASS=org.elasticsearch.node.Eta1Node

usage() {
    cat <<EOF
usage: es/start.sh [options] [-- node-args...]

Options (each also settable through the environment variable in brackets):
  --port PORT        HTTP port on 127.0.0.1, 0 lets the OS choose [ES_PORT, default 9200]
  --data-dir DIR     node home: data, logs and config folders [ES_DATA_DIR, default REPO/.es]
  --pid-file FILE    where the node's pid is written [ES_PID_FILE, default DATA_DIR/node.pid]
  --log-file FILE    node stdout and stderr, truncated at start [ES_LOG_FILE, default DATA_DIR/node.log]
  --timeout SECONDS  max wait for yellow or green health [ES_START_TIMEOUT, default 120]
  --build-only       resolve dependencies and compile the launcher, start nothing
  -h, --help         show this help

Other environment variables:
  JAVA_HOME          JDK to use; if unset, Java 17 (then 21) under /usr/lib/jvm, then java on PATH
  ES_HEAP            heap size for -Xms and -Xmx [default 512m]
  ES_JAVA_OPTS       extra JVM options, split on spaces

Arguments after -- go to the launcher, e.g. -- -Eaction.destructive_requires_name=false
EOF
}

die() {
    echo "es/start.sh: $*" >&2
    exit 1
}

port=${ES_PORT:-9200}
data_dir=${ES_DATA_DIR:-$REPO_ROOT/.es}
pid_file=${ES_PID_FILE:-}
log_file=${ES_LOG_FILE:-}
timeout=${ES_START_TIMEOUT:-120}
build_only=false
node_args=()

while (($# > 0)); do
    case "$1" in
        --port) port=${2:?--port needs a value}; shift 2 ;;
        --data-dir) data_dir=${2:?--data-dir needs a value}; shift 2 ;;
        --pid-file) pid_file=${2:?--pid-file needs a value}; shift 2 ;;
        --log-file) log_file=${2:?--log-file needs a value}; shift 2 ;;
        --timeout) timeout=${2:?--timeout needs a value}; shift 2 ;;
        --build-only) build_only=true; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; node_args=("$@"); break ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

if ! [[ $port =~ ^[0-9]+$ ]] || ((port > 65535)); then
    die "invalid port: $port (expected 0-65535)"
fi
[[ $timeout =~ ^[0-9]+$ ]] || die "invalid timeout: $timeout (expected whole seconds)"

# Prints the java binary to use: JAVA_HOME, else the Debian OpenJDK 17 (or 21) package, else java on PATH.
find_java() {
    if [[ -n ${JAVA_HOME:-} ]]; then
        [[ -x $JAVA_HOME/bin/java ]] || die "JAVA_HOME=$JAVA_HOME has no bin/java"
        echo "$JAVA_HOME/bin/java"
        return
    fi
    local candidate
    for candidate in /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/java-21-openjdk-*/bin/java; do
        if [[ -x $candidate ]]; then
            echo "$candidate"
            return
        fi
    done
    candidate=$(command -v java) || die "no Java found: set JAVA_HOME or run es/install-deps.sh"
    echo "$candidate"
}

# Prints the feature release of the given java binary, e.g. 17.
java_feature_version() {
    "$1" -XshowSettings:properties -version 2>&1 |
        sed -n 's/^ *java\.specification\.version = \([0-9][0-9]*\).*/\1/p'
}

# True when target/ lacks the compiled launcher or the classpath file, when the
# pom or the source is newer, or when a jar listed in the classpath is gone.
build_needed() {
    local class_file=$ES_DIR/target/classes/org/elasticsearch/node/Eta1Node.class
    local classpath_file=$ES_DIR/target/classpath.txt
    [[ -f $class_file && -f $classpath_file ]] || return 0
    [[ $ES_DIR/pom.xml -nt $class_file ]] && return 0
    [[ $ES_DIR/src/main/java/org/elasticsearch/node/Eta1Node.java -nt $class_file ]] && return 0
    local jar
    local -a jars
    IFS=: read -r -a jars <"$classpath_file" || true # the file has no final newline
    for jar in "${jars[@]}"; do
        [[ -f $jar ]] || return 0
    done
    return 1
}

build() {
    command -v mvn >/dev/null || die "mvn not found: run es/install-deps.sh"
    mkdir -p "$ES_DIR/target"
    # Nodes started in parallel (e.g. by pytest-xdist workers) must not run Maven on the same target/ at once.
    exec 9>"$ES_DIR/target/.build.lock"
    flock 9
    if build_needed; then
        local build_log=$ES_DIR/target/maven-build.log
        echo "es/start.sh: building the launcher with Maven, log $build_log (first run downloads about 70 MB into ~/.m2)" >&2
        # Maven compiles with the JDK the node will run on.
        if ! JAVA_HOME=$java_home mvn -B -Dstyle.color=never -f "$ES_DIR/pom.xml" compile >"$build_log" 2>&1; then
            grep -E '^\[ERROR\]' "$build_log" | head -n 15 >&2 || tail -n 30 "$build_log" >&2
            die "Maven build failed (command: mvn -B -f $ES_DIR/pom.xml compile, full log $build_log)"
        fi
    fi
    exec 9>&-
}

java_bin=$(find_java)
java_home=$(dirname "$(dirname "$(readlink -f "$java_bin")")")
java_version=$(java_feature_version "$java_bin")
[[ -n $java_version ]] || die "cannot run $java_bin -version"
((java_version >= 17)) || die "$java_bin is Java $java_version, Elasticsearch 8 needs 17 or newer"

build
if [[ $build_only == true ]]; then
    echo "es/start.sh: launcher built in $ES_DIR/target" >&2
    exit 0
fi

mkdir -p "$data_dir"
data_dir=$(cd "$data_dir" && pwd)
pid_file=${pid_file:-$data_dir/node.pid}
log_file=${log_file:-$data_dir/node.log}

if [[ -f $pid_file ]]; then
    old_pid=$(<"$pid_file")
    if [[ -n $old_pid ]] && kill -0 "$old_pid" 2>/dev/null; then
        die "a node is already running with pid $old_pid (pid file $pid_file); stop it with es/stop.sh"
    fi
    rm -f "$pid_file"
fi

mkdir -p "$data_dir/logs" "$data_dir/tmp" "$(dirname "$pid_file")" "$(dirname "$log_file")"
# The node writes the bound HTTP address here once it listens (node.portsfile).
ports_file=$data_dir/logs/http.ports
rm -f "$ports_file"
: >"$log_file"

# Java 23 and newer dropped the COMPAT locale data, which Elasticsearch 8 selects on older JDKs.
if ((java_version < 23)); then
    locale_providers=SPI,COMPAT
else
    locale_providers=CLDR
fi

# A subset of the options that Elasticsearch 8's own launcher sets (SystemJvmOptions and the default jvm.options).
# -XX:+AlwaysPreTouch is left out so that the resident memory stays at what the node actually uses.
jvm_opts=(
    "-Xms${ES_HEAP:-512m}" "-Xmx${ES_HEAP:-512m}"
    -XX:+UseG1GC
    -Xss1m
    -XX:+ExitOnOutOfMemoryError
    -XX:-OmitStackTraceInFastThrow
    "-XX:ErrorFile=$data_dir/logs/hs_err_pid%p.log"
    -Djava.awt.headless=true
    -Dfile.encoding=UTF-8
    "-Djava.locale.providers=$locale_providers"
    "-Djava.io.tmpdir=$data_dir/tmp"
    -Djna.nosys=true
    -Dio.netty.noUnsafe=true
    -Dio.netty.noKeySetOptimization=true
    -Dio.netty.recycler.maxCapacityPerThread=0
    -Dio.netty.allocator.numDirectArenas=0
    -Dlog4j.shutdownHookEnabled=false
    -Dlog4j2.disable.jmx=true
    -Dlog4j2.formatMsgNoLookups=true
    -Des.networkaddress.cache.ttl=60
    -Des.networkaddress.cache.negative.ttl=10
)
if ((java_version >= 22)); then
    # Lucene calls restricted FFM methods, which Java 22+ warns about without this.
    jvm_opts+=(--enable-native-access=ALL-UNNAMED)
fi
if [[ -n ${ES_JAVA_OPTS:-} ]]; then
    read -r -a extra_jvm_opts <<<"$ES_JAVA_OPTS"
    jvm_opts+=("${extra_jvm_opts[@]}")
fi

classpath=$ES_DIR/target/classes:$(<"$ES_DIR/target/classpath.txt")

echo "es/start.sh: starting Elasticsearch with $java_bin (Java $java_version), home $data_dir, log $log_file" >&2
launch_us=${EPOCHREALTIME/./}
nohup "$java_bin" "${jvm_opts[@]}" -cp "$classpath" "$MAIN_CLASS" \
    "--home=$data_dir" "--http-port=$port" ${node_args[@]+"${node_args[@]}"} \
    </dev/null >>"$log_file" 2>&1 &
pid=$!
echo "$pid" >"$pid_file"

fail_with_log() {
    echo "es/start.sh: $1" >&2
    local errors
    errors=$(grep -E '^\[[^]]*\]\[(FATAL|ERROR)' "$log_file" | head -n 10 || true)
    if [[ -n $errors ]]; then
        echo "---- FATAL and ERROR lines in $log_file ----" >&2
        echo "$errors" >&2
    fi
    echo "---- last 30 lines of $log_file ----" >&2
    tail -n 30 "$log_file" >&2 || true
    echo "----" >&2
    exit 1
}

deadline=$((SECONDS + timeout))
url=
while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pid_file"
        fail_with_log "the node (pid $pid) exited during startup"
    fi
    if [[ -z $url && -s $ports_file ]]; then
        # One host:port per line; with network.host=127.0.0.1 there is a single one.
        url=http://$(head -n 1 "$ports_file")
    fi
    if [[ -n $url ]]; then
        health=$(curl -s -m 5 "$url/_cluster/health" 2>/dev/null || true)
        if [[ $health =~ \"status\":\"(green|yellow)\" ]]; then
            break
        fi
    fi
    if ((SECONDS >= deadline)); then
        # A caller that sees the failure should not have to clean up a half-started node.
        "$ES_DIR/stop.sh" --pid-file "$pid_file" --timeout 30 || kill -KILL "$pid" 2>/dev/null || true
        rm -f "$pid_file"
        fail_with_log "timed out after ${timeout}s waiting for yellow or green health at ${url:-<no HTTP address yet>}; the node (pid $pid) was stopped"
    fi
    sleep 0.5
done

status=${BASH_REMATCH[1]}
elapsed_ms=$(((${EPOCHREALTIME/./} - launch_us) / 1000))
echo "es/start.sh: node is up after $((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000)))s (pid $pid, health $status)" >&2
echo "$url"
