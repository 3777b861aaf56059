# A thin device with an external origin: reads of unprovisioned blocks come from the origin
# (zeros past its end), a partial write copies the origin's block first, a whole-block write
# does not; the origin itself is never written.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=256 status=none
# a 1 MiB origin full of a pattern (seq output); the thin device is 2 MiB
seq 1 200000 | head -c 1048576 > origin.img
run losetup -f --show meta.img
run losetup -f --show data.img
run losetup -f --show -r origin.img
run dmsetup create pool --table "0 524288 thin-pool /dev/loop0 /dev/loop1 128 100"
run dmsetup message pool 0 "create_thin 1"
run dmsetup create ext --table "0 4096 thin /dev/mapper/pool 1 /dev/loop2"
run dmsetup table ext
run dmsetup status ext
# the whole device: 1 MiB of origin, then 1 MiB of zeros
run sh -c 'dd if=/dev/mapper/ext bs=64K iflag=direct status=none | md5sum'
run sh -c 'head -c 1048576 origin.img | cat - /dev/zero | head -c 2097152 | md5sum'
# a 4 KiB write in block 2 (inside the origin), a whole 64 KiB block 5, a write in block 20
# (past the origin's end)
run dd if=/dev/zero of=/dev/mapper/ext bs=4K seek=33 count=1 oflag=direct conv=fsync,notrunc status=none
run sh -c 'printf abcdefgh | dd of=/dev/mapper/ext bs=1 seek=327680 conv=fsync,notrunc status=none'
run sh -c 'seq 5 | dd of=/dev/mapper/ext bs=64K count=1 seek=5 iflag=fullblock conv=sync,fsync,notrunc status=none'
run sh -c 'printf xyz | dd of=/dev/mapper/ext bs=1 seek=1310720 conv=fsync,notrunc status=none'
run dmsetup status ext
run dmsetup status pool
run sh -c 'dd if=/dev/mapper/ext bs=64K iflag=direct status=none | md5sum'
run sh -c 'dd if=/dev/mapper/ext bs=64K skip=2 count=1 iflag=direct status=none | md5sum'
run sh -c 'dd if=/dev/mapper/ext bs=64K skip=5 count=1 iflag=direct status=none | md5sum'
run sh -c 'dd if=/dev/mapper/ext bs=64K skip=20 count=1 iflag=direct status=none | md5sum'
run sh -c 'dd if=/dev/mapper/ext bs=4K skip=34 count=1 iflag=direct status=none | md5sum'
run md5sum origin.img
udevadm settle
run dmsetup remove ext
run dmsetup remove pool
run losetup -D
