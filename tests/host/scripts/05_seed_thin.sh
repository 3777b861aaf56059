# Seed walkthrough, section 3: a thin pool on sparse files, a thin device and a snapshot.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

run dd if=/dev/zero of=metadata bs=1 count=0 seek=2G
run dd if=/dev/zero of=data bs=1 count=0 seek=100G
run losetup /dev/loop0 metadata
run losetup /dev/loop1 data
run losetup -a
run dmsetup create pool --table "0 20971520 thin-pool /dev/loop0 /dev/loop1 128 32768"
run dmsetup status pool
run dmsetup message /dev/mapper/pool 0 "create_thin 0"
run dmsetup create thin --table "0 2097152 thin /dev/mapper/pool 0"
run dmsetup status
seq 1 100000 | head -c 196608 > rand.bin
run dd if=rand.bin of=/dev/mapper/thin bs=64K oflag=direct conv=fsync
# udev probes a device closed after writing (blkid opens it); a probe still open while
# thin is suspended would show in info's open count, and on a real host it sometimes is
udevadm settle
run dmsetup suspend /dev/mapper/thin
run dmsetup info thin
run dmsetup message /dev/mapper/pool 0 "create_snap 1 0"
run dmsetup resume /dev/mapper/thin
run dmsetup create snap --table "0 2097152 thin /dev/mapper/pool 1"
run dmsetup status
run dmsetup table
run dmsetup ls
run dmsetup deps
run dmsetup info
run dmsetup ls --tree
# the snapshot shares the origin's blocks until one of them is written
md5sum < rand.bin
run sh -c 'dd if=/dev/mapper/snap bs=64K count=3 status=none | md5sum'
run dd if=/dev/zero of=/dev/mapper/thin bs=64K count=1 seek=1 oflag=direct conv=fsync status=none
run dmsetup status pool thin snap
run sh -c 'dd if=/dev/mapper/snap bs=64K count=3 status=none | md5sum'
run sh -c 'dd if=/dev/mapper/thin bs=64K count=3 status=none | md5sum'
run du -k metadata data
udevadm settle
run dmsetup remove snap
run dmsetup remove thin
run dmsetup remove pool
run losetup -d /dev/loop0 /dev/loop1
run sh -c 'dmesg | grep device-mapper:'
