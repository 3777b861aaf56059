# blkdiscard on thins: aligned and unaligned ranges, -v, whole device, ignore_discard and
# no_discard_passdown pools, and the loop device itself.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=256 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run dmsetup create pool --table "0 524288 thin-pool /dev/loop0 /dev/loop1 128 16"
run dmsetup message pool 0 create_thin 0
run dmsetup create thin0 --table "0 65536 thin /dev/mapper/pool 0"
run dd if=/dev/zero of=/dev/mapper/thin0 bs=1M count=4 oflag=direct conv=fsync status=none
tr '\0' 'x' < /dev/zero | head -c 4194304 > x.bin
run dd if=x.bin of=/dev/mapper/thin0 bs=1M oflag=direct conv=fsync status=none
run dmsetup status pool thin0
run du -k data.img
run blockdev --getdiscardzeroes /dev/mapper/thin0
run cat /sys/block/dm-1/queue/discard_granularity /sys/block/dm-1/queue/discard_max_bytes
run blkdiscard -o 0 -l 65536 /dev/mapper/thin0
run dmsetup status pool thin0
run blkdiscard -v -o 131072 -l 131072 /dev/mapper/thin0
run dmsetup status pool thin0
# unaligned to the 64 KiB blocks (but to sectors): only whole blocks inside the range go
run blkdiscard -v -o 200704 -l 200704 /dev/mapper/thin0
run dmsetup status pool thin0
run blkdiscard -o 300000 -l 140000 /dev/mapper/thin0
run blkdiscard -o 1000 -l 512 /dev/mapper/thin0
run blkdiscard -o 512 -l 1000 /dev/mapper/thin0
run blkdiscard -o 1024 -l 2048 /dev/mapper/thin0
run dmsetup status pool thin0
run blkdiscard -o 40000000 -l 65536 /dev/mapper/thin0
run blkdiscard -o 2097152 -l 40000000 /dev/mapper/thin0
run dmsetup status pool thin0
run sh -c 'dd if=/dev/mapper/thin0 bs=64K count=8 status=none | md5sum'
run du -k data.img
run blkdiscard -v -p 64K -o 1M -l 256K /dev/mapper/thin0
run dmsetup status pool thin0
run blkdiscard -v /dev/mapper/thin0
run dmsetup status pool thin0
run du -k data.img
run blkdiscard -z -o 0 -l 64K /dev/mapper/thin0
run dmsetup status pool thin0
run blkdiscard -s /dev/mapper/thin0
run blkdiscard /dev/mapper/nosuchdev
run blkdiscard
run blkdiscard data.img
run blkdiscard -o junk /dev/mapper/thin0
# discard support cannot be switched off by a reload
run dmsetup reload pool --table "0 524288 thin-pool /dev/loop0 /dev/loop1 128 16 1 ignore_discard"
# ignore_discard (pool made again): the thin advertises no discard
run dd if=x.bin of=/dev/mapper/thin0 bs=1M oflag=direct conv=fsync status=none
run dmsetup status pool thin0
run du -k data.img
udevadm settle
run dmsetup remove thin0
run dmsetup remove pool
run dmsetup create pool --table "0 524288 thin-pool /dev/loop0 /dev/loop1 128 16 1 ignore_discard"
run dmsetup table pool
run dmsetup status pool
run dmsetup create thin0 --table "0 65536 thin /dev/mapper/pool 0"
run cat /sys/block/dm-1/queue/discard_granularity /sys/block/dm-1/queue/discard_max_bytes
run blockdev --getdiscardzeroes /dev/mapper/thin0
run blkdiscard -o 0 -l 65536 /dev/mapper/thin0
run blkdiscard -v /dev/mapper/thin0
run dmsetup status pool thin0
udevadm settle
run dmsetup remove thin0
run dmsetup remove pool
# no_discard_passdown: blocks are unmapped but the data file keeps its space
run dmsetup create pool --table "0 524288 thin-pool /dev/loop0 /dev/loop1 128 16 1 no_discard_passdown"
run dmsetup create thin0 --table "0 65536 thin /dev/mapper/pool 0"
run dmsetup table pool
run dmsetup status pool
run cat /sys/block/dm-1/queue/discard_granularity /sys/block/dm-1/queue/discard_max_bytes
run du -k data.img
run blkdiscard -v -o 0 -l 1M /dev/mapper/thin0
run dmsetup status pool thin0
run du -k data.img
# the freed blocks are reused by the next writes
run dd if=/dev/zero of=/dev/mapper/thin0 bs=1M count=1 seek=8 oflag=direct conv=fsync status=none
run dmsetup status pool thin0
run du -k data.img
udevadm settle
run dmsetup remove thin0
run dmsetup remove pool
# discard on the loop device itself punches holes in its file
run blkdiscard -v -o 0 -l 2M /dev/loop1
run du -k data.img
run blkdiscard -v /dev/loop1
run du -k data.img
run losetup -D
run sh -c 'dmesg | grep device-mapper:'
