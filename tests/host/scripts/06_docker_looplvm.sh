# Seed walkthrough, section 4: Docker 1.12's loop-lvm pool, base device, layers, a container.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

mkdir -p devicemapper/devicemapper devicemapper/metadata
run dd if=/dev/zero of=devicemapper/devicemapper/data bs=1 count=0 seek=100G
run dd if=/dev/zero of=devicemapper/devicemapper/metadata bs=1 count=0 seek=2G
run losetup -f --show devicemapper/devicemapper/data
run losetup -f --show devicemapper/devicemapper/metadata
P=docker-253:0-2001-pool
run dmsetup create $P --table "0 209715200 thin-pool 7:1 7:0 128 32768 1 skip_block_zeroing"
run dmsetup table
run dmsetup status
run dmsetup ls
run dmsetup info $P
run blockdev --getsize64 /dev/mapper/$P
# the base device: thin id 1, 10 GiB
run dmsetup message $P 0 "create_thin 1"
run dmsetup message $P 0 "set_transaction_id 0 1"
run dmsetup create docker-253:0-2001-base --table "0 20971520 thin /dev/mapper/$P 1"
run blockdev --getsize64 /dev/mapper/docker-253:0-2001-base
printf 'base file\n' > base.txt
run dd if=base.txt of=/dev/mapper/docker-253:0-2001-base bs=64K conv=sync,fsync oflag=direct
udevadm settle
run dmsetup remove docker-253:0-2001-base
echo '{"device_id":1,"size":10737418240,"transaction_id":1,"initialized":true,"deleted":false}' > devicemapper/metadata/base
# image layers (ids from 2), each a snapshot of the one below; the container's init layer and the container
run dmsetup message $P 0 "create_snap 2 1"
run dmsetup message $P 0 "set_transaction_id 1 2"
run dmsetup message $P 0 "create_snap 3 2"
run dmsetup message $P 0 "set_transaction_id 2 3"
run dmsetup message $P 0 "create_snap 4 3"
run dmsetup message $P 0 "set_transaction_id 3 4"
run dmsetup message $P 0 "create_snap 5 4"
run dmsetup message $P 0 "set_transaction_id 4 5"
C=docker-253:0-2001-3b1a7c9e2f04d5a6
run dmsetup create $C --table "0 20971520 thin /dev/mapper/$P 5"
run sh -c "dd if=/dev/mapper/$C bs=10 count=1 status=none"
seq 1 100000 | head -c 262144 > layer.bin
run dd if=layer.bin of=/dev/mapper/$C bs=64K count=4 seek=8 oflag=direct conv=fsync status=none
run dmsetup status
run dmsetup ls
run dmsetup ls --tree
run dmsetup table $C
run dmsetup deps $C
run du -k devicemapper/devicemapper/data devicemapper/devicemapper/metadata
udevadm settle
run dmsetup remove $C
run dmsetup message $P 0 "delete 5"
run dmsetup status $P
run dmsetup remove $P
run losetup -D
run losetup -a
run thin_ls devicemapper/devicemapper/metadata
run sh -c 'dmesg | grep device-mapper:'
