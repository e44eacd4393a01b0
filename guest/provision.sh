#!/bin/sh
# Steps run inside an image's rootfs (chroot) while vmbinder builds it on the host.
# The host has bound /dev, /dev/pts, /proc and /sys and installed a policy-rc.d
# that keeps services from starting. One step per call:
#   provision.sh ca                                   trust /usr/local/share/ca-certificates
#   provision.sh apt PACKAGE...                       apt-get update + install
#   provision.sh apt-from SUITE PACKAGE...            install from a pinned suite
#   provision.sh venv DIR PIP-ARG...                  a venv with pip packages, no cache
#   provision.sh user NAME UID DIR                    a login user owning DIR
#   provision.sh finish                               forget this build's identity
#   provision.sh trim                                 drop apt lists, caches, docs
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
step="$1"; shift

case "$step" in
ca)
    update-ca-certificates
    ;;
apt)
    apt-get update -q
    apt-get install -y -q --no-install-recommends "$@"
    ;;
apt-from)
    suite="$1"; shift
    apt-get install -y -q --no-install-recommends -t "$suite" "$@"
    ;;
venv)
    dir="$1"; shift
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q --no-cache-dir --disable-pip-version-check "$@"
    ;;
user)
    id -u "$1" >/dev/null 2>&1 || useradd --create-home --uid "$2" --user-group --shell /bin/bash "$1"
    chown -R "$2:$2" "$3"
    ;;
finish)
    # Every boot of the image is a new instance: new ssh host keys, new machine id.
    rm -f /etc/ssh/ssh_host_* /var/lib/dbus/machine-id /etc/docker/key.json
    if [ -e /etc/machine-id ]; then : > /etc/machine-id; fi
    if [ -f /etc/resolv.conf ] && [ ! -L /etc/resolv.conf ]; then : > /etc/resolv.conf; fi
    echo localhost > /etc/hostname
    ;;
trim)
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* \
        /usr/share/info/* /root/.cache /tmp/* /var/tmp/*
    find /var/log -type f -delete
    ;;
*)
    echo "provision.sh: unknown step $step" >&2
    exit 2
    ;;
esac
