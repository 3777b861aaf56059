# The thin tools on devices rather than files: a live pool's metadata loop device (busy
# without -m, readable through the held snapshot), the pool and thin devices themselves,
# unattached and missing loop devices, and thin_restore/thin_repair onto a loop device.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=1024 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup message pool 0 create_thin 0
run dmsetup create thin0 --table "0 409600 thin /dev/mapper/pool 0"
seq 1 1000000 | head -c 1048576 > pattern.bin
run dd if=pattern.bin of=/dev/mapper/thin0 bs=64K count=4 oflag=direct conv=fsync status=none
run dmsetup message pool 0 create_snap 1 0
run dmsetup message pool 0 set_transaction_id 0 9
run dmsetup status pool
# live metadata device
run thin_check -m /dev/loop0
run thin_dump -r /dev/loop0
run thin_ls --no-headers /dev/loop0
run dmsetup message pool 0 reserve_metadata_snap
run dd if=pattern.bin of=/dev/mapper/thin0 bs=64K count=1 seek=9 oflag=direct conv=fsync status=none
run thin_check -m /dev/loop0
run thin_check -m -q /dev/loop0
run thin_dump -m /dev/loop0
run thin_dump -m -f human_readable --dev-id 1 /dev/loop0
run thin_ls -m -o DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS /dev/loop0
run thin_delta -m --snap1 1 --snap2 0 /dev/loop0
run thin_delta -m --verbose --snap1 0 --snap2 1 /dev/loop0
run thin_check /dev/loop1
run thin_dump -m /dev/loop1
# the pool and thin devices themselves
run thin_check /dev/mapper/pool
run thin_dump -m /dev/mapper/pool
run thin_check /dev/mapper/thin0
run thin_dump /dev/dm-1
run thin_check /dev/mapper/nosuch
run thin_dump /dev/loop5
run thin_check /dev/loop5
run thin_ls /dev/loop5
run thin_dump /dev/loop9
run thin_check 7:0
# restore and repair onto a live pool's device
thin_dump -m /dev/loop0 > snap.xml
run thin_restore -i snap.xml -o /dev/loop0
run thin_repair -i meta.img -o /dev/loop0
run dmsetup message pool 0 release_metadata_snap
udevadm settle
run dmsetup remove thin0
run dmsetup remove pool
# the loop device is still attached: the tools read and write it
run thin_check /dev/loop0
run thin_dump /dev/loop0
run thin_ls -o DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS /dev/loop0
dd if=/dev/zero of=repaired.img bs=1M count=0 seek=16 status=none
run thin_repair -i /dev/loop0 -o repaired.img
run thin_check repaired.img
run thin_restore -i snap.xml -o /dev/loop0
run thin_check /dev/loop0
run thin_dump /dev/loop0
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup status pool
run dmsetup create thin1 --table "0 409600 thin /dev/mapper/pool 1"
run sh -c 'dd if=/dev/mapper/thin1 bs=64K count=4 status=none | md5sum'
run sh -c 'head -c 262144 pattern.bin | md5sum'
# a metadata image copied onto a thin device reads back through the pool
run dmsetup message pool 0 create_thin 5
run dmsetup create thin5 --table "0 32768 thin /dev/mapper/pool 5"
run dd if=repaired.img of=/dev/mapper/thin5 bs=1M oflag=direct conv=fsync status=none
run thin_check /dev/mapper/thin5
run thin_ls /dev/mapper/thin5
run thin_restore -i snap.xml -o /dev/mapper/thin5
run thin_dump /dev/mapper/thin5
udevadm settle
run dmsetup remove thin1 thin5
run dmsetup remove pool
run losetup -D
