# A pool's life: low water mark event, growing data and metadata by reload, re-creating the
# pool on the same files (thins come back), wiping the superblock (fresh metadata).
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=4 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=16 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run dmsetup create pool --table "0 32768 thin-pool /dev/loop0 /dev/loop1 128 200"
run dmsetup status pool
run dmsetup info -c -o name,events pool
run dmsetup message pool 0 create_thin 0
run dmsetup create thin0 --table "0 131072 thin /dev/mapper/pool 0"
run dd if=/dev/zero of=/dev/mapper/thin0 bs=64K count=60 oflag=direct conv=fsync status=none
run dmsetup status pool
run dmsetup info -c -o name,events pool
run sh -c 'dmesg | grep device-mapper:'
# grow the data device: file, loop device, then the pool's table
run dd if=/dev/zero of=data.img bs=1M count=0 seek=64
run losetup -c /dev/loop1
run blockdev --getsz /dev/loop1
run dmsetup reload pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 200"
run dmsetup status pool
run dmsetup table --inactive pool
run dmsetup suspend pool
run dmsetup resume pool
run dmsetup status pool
run dmsetup info -c -o name,events pool
run dmsetup table pool
# grow the metadata device
run dd if=/dev/zero of=meta.img bs=1M count=0 seek=8
run losetup -c /dev/loop0
run dmsetup suspend pool
run dmsetup reload pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 200"
run dmsetup resume pool
run dmsetup status pool
# shrinking the data device is refused
run dmsetup reload pool --table "0 65536 thin-pool /dev/loop0 /dev/loop1 128 200"
run dmsetup suspend pool
run dmsetup resume pool
run dmsetup info -c -o name,attr pool
run dmsetup reload pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 200"
run dmsetup resume pool
run dmsetup status pool
# change the block size on existing metadata: refused
run dmsetup reload pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 256 200"
run dmsetup suspend pool
run dmsetup resume pool
run dmsetup table pool
run dmsetup status pool
run dmsetup info pool
run dmsetup reload pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 200"
run dmsetup resume pool
run dmsetup status pool
# deactivate, then build the pool again on the same files: thin 0 is still there
udevadm settle
run dmsetup remove thin0
run dmsetup remove pool
run dmsetup create pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 200"
run dmsetup status pool
run dmsetup message pool 0 create_thin 0
run dmsetup create thin0 --table "0 131072 thin /dev/mapper/pool 0"
run dmsetup status thin0
run dmsetup remove thin0
run dmsetup remove pool
# a different block size on existing metadata
run dmsetup create pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 256 200"
# wipe the superblock: the next pool formats fresh metadata
run dd if=/dev/zero of=/dev/loop0 bs=4096 count=1 oflag=direct conv=fsync status=none
run dmsetup create pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 256 200"
run dmsetup status pool
run dmsetup message pool 0 create_thin 0
run dmsetup remove pool
run losetup -D
run sh -c 'dmesg | grep device-mapper:'
