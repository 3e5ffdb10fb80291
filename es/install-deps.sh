#!/usr/bin/env bash
# Make es/start.sh runnable on a fresh Debian machine: install a JDK (17, or 21
# where the release has no 17), Maven and curl through apt-get when they are
# missing, then resolve the Elasticsearch jars into ~/.m2 and compile the
# launcher. Safe to run again: it skips what is already there.
set -euo pipefail

ES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() {
    echo "es/install-deps.sh: $*" >&2
}

# True when a JDK (javac) of release 17 or newer is where es/start.sh looks for Java.
have_jdk() {
    local javac_bin version
    if [[ -n ${JAVA_HOME:-} ]]; then
        javac_bin=$JAVA_HOME/bin/javac
    else
        for javac_bin in /usr/lib/jvm/java-17-openjdk-*/bin/javac /usr/lib/jvm/java-21-openjdk-*/bin/javac; do
            [[ -x $javac_bin ]] && return 0
        done
        javac_bin=$(command -v javac) || return 1
    fi
    [[ -x $javac_bin ]] || return 1
    version=$("$javac_bin" -version 2>&1 | sed -n 's/^javac \([0-9][0-9]*\).*/\1/p')
    [[ -n $version ]] && ((version >= 17))
}

packages=()
if ! have_jdk; then
    [[ -z ${JAVA_HOME:-} ]] || log "JAVA_HOME=$JAVA_HOME has no JDK 17 or newer; installing a Debian JDK, which JAVA_HOME still overrides"
    packages+=(jdk)
fi
command -v mvn >/dev/null || packages+=(maven)
command -v curl >/dev/null || packages+=(curl)
command -v flock >/dev/null || packages+=(util-linux)

if ((${#packages[@]} > 0)); then
    command -v apt-get >/dev/null || {
        log "missing ${packages[*]} and apt-get is not available; install them by hand"
        exit 1
    }
    sudo_cmd=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || {
            log "missing ${packages[*]}; run as root or install sudo"
            exit 1
        }
        sudo_cmd=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get update"
    "${sudo_cmd[@]}" apt-get update -qq
    for i in "${!packages[@]}"; do
        if [[ ${packages[$i]} == jdk ]]; then
            # Debian 12 ships OpenJDK 17; Debian 13 dropped it, and Elasticsearch 8.19 runs on 21 as well.
            if apt-cache policy openjdk-17-jdk-headless 2>/dev/null | grep -Eq '^ *Candidate: [0-9]'; then
                packages[i]=openjdk-17-jdk-headless
            else
                packages[i]=openjdk-21-jdk-headless
            fi
        fi
    done
    log "apt-get install ${packages[*]}"
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

# Resolves the jars into ~/.m2 and compiles the launcher, unless target/ is already up to date.
"$ES_DIR/start.sh" --build-only
log "done"
