# A pool over metadata devices too small for the kernel to format (512 bytes to 24 KiB), the
# smallest sizes it formats and what their status shows, and sizes that are not a multiple of
# the 4 KiB metadata block.  What dmsetup prints, its status, and the kernel's log lines.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }
# the device-mapper lines the kernel logged since the last call
seen=0
newlog() {
    dmesg | grep device-mapper: >log.now
    tail -n +$((seen + 1)) log.now
    seen=$(wc -l <log.now)
}

dd if=/dev/zero of=data.img bs=1M count=0 seek=64 status=none
run losetup -f --show data.img
for size in 512 4096 6144 8192 12288 16384 20480 24576 28672 32768 36864 40960 49152 65536 69632 1048576; do
    dd if=/dev/zero of=meta.img bs=$size count=1 status=none
    run losetup -f --show meta.img
    run dmsetup create pool --table "0 131072 thin-pool /dev/loop1 /dev/loop0 128 16"
    newlog
    if dmsetup info pool >/dev/null 2>&1; then
        run dmsetup status pool
        run dmsetup message pool 0 create_thin 0
        run dmsetup status pool
        udevadm settle
        run dmsetup remove pool
    fi
    run losetup -d /dev/loop1
    rm meta.img
done
run dmsetup ls
run losetup -a
