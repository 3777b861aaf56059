# thin_delta between snapshots, after writes to origin and snapshot.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=1024 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup message pool 0 create_thin 0
run dmsetup create thin0 --table "0 409600 thin /dev/mapper/pool 0"
seq 1 1000000 | head -c 1048576 > pattern.bin
run dd if=pattern.bin of=/dev/mapper/thin0 bs=64K count=10 oflag=direct conv=fsync status=none
run dd if=pattern.bin of=/dev/mapper/thin0 bs=64K count=2 seek=50 oflag=direct conv=fsync status=none
run dmsetup suspend thin0
run dmsetup message pool 0 create_snap 1 0
run dmsetup resume thin0
run dd if=/dev/zero of=/dev/mapper/thin0 bs=64K count=2 seek=3 oflag=direct conv=fsync status=none
run dd if=pattern.bin of=/dev/mapper/thin0 bs=64K count=1 seek=20 oflag=direct conv=fsync status=none
run blkdiscard -o 3276800 -l 65536 /dev/mapper/thin0
run dmsetup suspend thin0
run dmsetup message pool 0 create_snap 2 0
run dmsetup resume thin0
run dmsetup create snap1 --table "0 409600 thin /dev/mapper/pool 1"
run dd if=pattern.bin of=/dev/mapper/snap1 bs=64K count=1 seek=7 oflag=direct conv=fsync status=none
run dmsetup message pool 0 create_thin 3
run dmsetup status pool
run dmsetup message pool 0 reserve_metadata_snap
run thin_delta -m --snap1 1 --snap2 0 /dev/loop0
run thin_delta --metadata-snap --snap1 1 --snap2 2 /dev/loop0
run dmsetup message pool 0 release_metadata_snap
udevadm settle
run dmsetup remove snap1 thin0
run dmsetup remove pool
run losetup -D
run thin_delta --snap1 1 --snap2 0 meta.img
run thin_delta --snap1 0 --snap2 1 meta.img
run thin_delta --snap1 1 --snap2 2 meta.img
run thin_delta --snap1 2 --snap2 0 meta.img
run thin_delta --verbose --snap1 1 --snap2 0 meta.img
run thin_delta --snap1 0 --snap2 0 meta.img
run thin_delta --snap1 0 --snap2 3 meta.img
run thin_delta --snap1 3 --snap2 1 meta.img
run thin_delta --snap1 0 --snap2 9 meta.img
run thin_delta --snap1 0 meta.img
run thin_delta meta.img
run thin_delta --snap1 x --snap2 0 meta.img
run thin_delta --snap1 0 --snap2 1
run thin_delta --snap1 0 --snap2 1 missing.img
run thin_delta --version
run thin_delta -h
