#!/usr/bin/env bash
# Boot a built image once under qemu and wait for cloud-init to finish.
#   guest/boot-check.sh IMAGE_DIR [TIMEOUT_SECONDS]
# Runs on a throwaway qcow2 overlay (the image stays clean) with a NoCloud seed
# whose user-data prints marker lines to the console (and, on a baked image,
# the versions of docker, buildx, repo2docker and caddy as the guest sees them). Uses KVM when /dev/kvm
# is ordinary KVM, TCG otherwise. Needs qemu-system-x86,
# qemu-utils, genisoimage. Exit 0 when the marker appeared, 1 otherwise.
set -euo pipefail
image="$(cd "$1" && pwd)"
timeout="${2:-600}"
work="$(mktemp -d /var/tmp/vmbinder-boot.XXXXXX)"
qemu_pid=""
cleanup() {
    if [[ -n "$qemu_pid" ]]; then kill "$qemu_pid" 2>/dev/null || true; wait "$qemu_pid" 2>/dev/null || true; fi
    rm -f "$work/overlay.qcow2" "$work/seed.iso"
}
trap cleanup EXIT

append="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["append"])' "$image/image.json")"
qemu-img create -q -f qcow2 -b "$image/disk.qcow2" -F qcow2 "$work/overlay.qcow2"
mkdir -p "$work/seed"
printf 'instance-id: boot-check-%s\nlocal-hostname: boot-check\n' "$(date +%s)" > "$work/seed/meta-data"
cat > "$work/seed/user-data" <<'EOF'
#cloud-config
bootcmd:
  - echo "VMBINDER-BOOTCMD $(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
runcmd:
  - echo "VMBINDER-RUNCMD $(cut -d' ' -f1 /proc/uptime) $(ip -4 -o addr show scope global | awk '{print $2, $4}')" > /dev/ttyS0
  - |
    if [ -f /etc/vmbinder/baked.json ]; then
      timeout 180 sh -c 'until docker info >/dev/null 2>&1; do sleep 2; done'
      echo "VMBINDER-BAKED $(cut -d' ' -f1 /proc/uptime) buildx: $(docker buildx version 2>&1 | head -n1); repo2docker: $(/opt/vmbinder/repo2docker/bin/repo2docker --version 2>&1 | tail -n1); docker: $(docker info --format '{{.ServerVersion}} {{.Driver}} cgroup{{.CgroupVersion}}' 2>&1 | head -n1); caddy: $(HOME=/root caddy version 2>/dev/null | head -n1)" > /dev/ttyS0
    fi
final_message: "VMBINDER-FINAL cloud-init $version done after $UPTIME s"
EOF
genisoimage -quiet -output "$work/seed.iso" -volid cidata -joliet -rock "$work/seed/user-data" "$work/seed/meta-data"

# Nested PVM (the kvm_pvm module) boots an unmodified kernel far slower than TCG.
accel=(-accel tcg,thread=multi -cpu max)
if [[ -w /dev/kvm && ! -d /sys/module/kvm_pvm ]]; then accel=(-accel kvm -cpu host); fi

start=$(date +%s)
qemu-system-x86_64 "${accel[@]}" -smp 2 -m 2048 -nographic -no-reboot \
    -kernel "$image/vmlinux" -initrd "$image/initrd.img" -append "$append" \
    -drive "file=$work/overlay.qcow2,if=virtio,format=qcow2" \
    -drive "file=$work/seed.iso,if=virtio,format=raw,readonly=on" \
    -nic user,model=virtio-net-pci \
    -serial "file:$work/console.log" -monitor none -display none &
qemu_pid=$!
echo "qemu pid $qemu_pid (${accel[*]}), console log $work/console.log" >&2

status=1
while (( $(date +%s) - start < timeout )); do
    if grep -q "VMBINDER-FINAL" "$work/console.log" 2>/dev/null; then status=0; break; fi
    if ! kill -0 "$qemu_pid" 2>/dev/null; then echo "qemu exited early" >&2; break; fi
    sleep 2
done
elapsed=$(( $(date +%s) - start ))
grep -a -E "VMBINDER-|login:" "$work/console.log" >&2 || true
if (( status == 0 )); then
    echo "boot check passed: cloud-init final after ${elapsed} s" >&2
else
    echo "boot check FAILED after ${elapsed} s; see $work/console.log" >&2
fi
exit "$status"
