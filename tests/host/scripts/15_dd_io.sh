# dd to and from /dev/mapper/NAME, /dev/dm-N and /dev/loopN: bs/count/seek/skip, oflag=direct,
# conv=fsync, status=none, short and failing transfers, md5sum of what comes back.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=64 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run dmsetup create pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 16 1 error_if_no_space"
run dmsetup message pool 0 create_thin 0
run dmsetup create thin0 --table "0 4096 thin /dev/mapper/pool 0"
seq 1 1000000 | head -c 1048576 > pattern.bin
run md5sum pattern.bin
run dd if=pattern.bin of=/dev/mapper/thin0 bs=64K count=4 oflag=direct conv=fsync
run dd if=pattern.bin of=/dev/dm-1 bs=4096 count=16 seek=100 skip=3 conv=fsync
run dd if=pattern.bin of=/dev/mapper/thin0 bs=512 count=1 seek=2000 oflag=direct
run dd if=pattern.bin of=/dev/mapper/thin0 bs=1000 count=3 seek=7 oflag=direct
run dd if=pattern.bin of=/dev/mapper/thin0 bs=1000 count=3 seek=7
run dd if=pattern.bin of=/dev/mapper/thin0 bs=1 count=1 seek=5000 conv=notrunc status=none
run dd if=/dev/mapper/thin0 bs=64K count=4 status=none of=out.bin
run md5sum out.bin
run sh -c 'head -c 262144 pattern.bin | md5sum'
run sh -c 'dd if=/dev/dm-1 bs=4096 count=16 skip=100 | md5sum'
run sh -c 'dd if=/dev/mapper/thin0 bs=512 skip=2000 count=1 iflag=direct status=none | md5sum'
run sh -c 'dd if=/dev/mapper/thin0 status=none | md5sum'
run dd if=/dev/mapper/thin0 of=/dev/null bs=1M
run dd if=/dev/mapper/thin0 of=/dev/null bs=1M count=1 status=noxfer
run dd if=/dev/mapper/thin0 of=/dev/null bs=1M count=1 status=none
run dd if=/dev/mapper/thin0 of=/dev/null bs=3000 count=1000
run dd if=/dev/mapper/thin0 of=/dev/null bs=1 count=1
run dd if=/dev/mapper/thin0 of=/dev/null bs=1000 count=1
run dd if=/dev/mapper/thin0 of=/dev/null bs=1M skip=5
udevadm settle
sync
run dmsetup status pool thin0
# past the end of the thin
run dd if=pattern.bin of=/dev/mapper/thin0 bs=64K count=2 seek=31 oflag=direct
run dd if=pattern.bin of=/dev/mapper/thin0 bs=64K count=2 seek=32 oflag=direct
run dd if=pattern.bin of=/dev/mapper/thin0 bs=64K count=1 seek=40
run dd if=/dev/mapper/thin0 of=/dev/null bs=64K skip=31
run dd if=/dev/zero of=/dev/mapper/thin0 bs=1M oflag=direct
run dd if=/dev/zero of=/dev/mapper/thin0 bs=1M
run dd if=/dev/mapper/thin0 of=/dev/null bs=1000 skip=10000
run dd if=/dev/mapper/thin0 of=/dev/null iflag=direct bs=1000 count=1
run dd if=/dev/mapper/nosuchdev of=/dev/null bs=1 count=1
# a dd to a missing device node makes a plain file in /dev/mapper
run dd if=pattern.bin of=/dev/mapper/nosuchdev bs=1 count=1
run ls /dev/mapper
run rm /dev/mapper/nosuchdev
udevadm settle
sync
run dmsetup status pool thin0
# the loop devices directly
run dd if=/dev/loop1 bs=64K count=4 status=none of=loop.bin
run md5sum loop.bin
run sh -c 'dd if=data.img bs=64K count=4 status=none | md5sum'
run dd if=pattern.bin of=/dev/loop1 bs=64K count=1 seek=1000 oflag=direct conv=fsync
run sh -c 'dd if=data.img bs=64K count=1 skip=1000 status=none | md5sum'
run sh -c 'head -c 65536 pattern.bin | md5sum'
# out of data space (error_if_no_space): a thin larger than the pool
run dmsetup create big --table "0 262144 thin /dev/mapper/pool 1"
run dmsetup message pool 0 create_thin 1
run dmsetup create big --table "0 262144 thin /dev/mapper/pool 1"
run dd if=/dev/zero of=/dev/mapper/big bs=1M oflag=direct conv=fsync
run dmsetup status pool
run dd if=/dev/zero of=/dev/mapper/big bs=64K count=1 seek=1500 oflag=direct
run dmsetup status pool
udevadm settle
run dmsetup remove big thin0 pool
run losetup -D
run sh -c 'dmesg | grep device-mapper:'
