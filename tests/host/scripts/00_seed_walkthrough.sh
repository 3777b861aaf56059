#!/bin/bash
# The walkthrough thinsim started from: a study of Docker 1.12's devicemapper storage driver
# (restated in the project's docs as seed-walkthrough.md), its commands run one by one.
#
#   thinsim run examples/seed-walkthrough.sh     # on the simulated host (what `make run` does)
#   sudo bash examples/seed-walkthrough.sh       # on a real host with dm-thin, as root
#
# It works in the current folder: the study's ~/file.img and /opt/{metadata,data} are made
# here, and it expects /dev/loop0 and /dev/loop1 to be free, as on a freshly booted host.
# Each command is printed after "$ ", then what it printed; a failure shows its exit status.
# What a real Debian 12 host prints for it is recorded in tests/host/recorded/ (as
# 00_seed_walkthrough) and the simulated host prints the same, byte for byte.

run() {
    printf '$ %s\n' "$*"
    "$@"
    local rc=$?
    if [ "$rc" -ne 0 ]; then printf '(exit status %d)\n' "$rc"; fi
}
section() { printf '\n# %s\n' "$*"; }

section "1. A loop device makes an ordinary file a block device"
run dd if=/dev/zero of=file.img bs=1MiB count=10
run losetup --find --show file.img
run losetup -a
run blockdev --getsize64 /dev/loop0
# The study then makes a file system on it and mounts it: under thinsim run the real mkfs
# and mount work on the simulated device (a real block device whose bytes are the model's).
# The new file system's UUID is random: left out of what is shown; so is mkfs's progress
# (it prints a count whenever a second has passed, so how many depends on the machine's speed).
export E2FSPROGS_SKIP_PROGRESS=1
run mkfs -t ext2 /dev/loop0 | grep -v '^Filesystem UUID: '
mkdir mnt
run mount /dev/loop0 mnt
run df -k --output=source,size,used,avail,target mnt
run umount mnt
run losetup --detach /dev/loop0
run losetup -a

section "2. Device mapper: a mapped device is a table of rows <start> <length> <target> <args>"
# A sparse 101 GiB file stands in for the study's /dev/sdc1.
run dd if=/dev/zero of=disk.img bs=1 count=0 seek=101G
run losetup --find --show disk.img
run dmsetup create mydevice --table "0 209715200 linear /dev/loop0 2048"
run dmsetup deps mydevice
run dmsetup info mydevice
run dmsetup ls
run dmsetup table mydevice
run dmsetup status mydevice
# A mapped device can be the target of another one, to any depth.
run dmsetup create upper --table "0 2048 linear /dev/mapper/mydevice 0"
run dmsetup ls --tree
# A linear target takes no messages: the kernel says so.
run dmsetup message mydevice 0 hello
run dmsetup suspend mydevice
run dmsetup info mydevice
run dmsetup resume mydevice
run dmsetup remove upper
run dmsetup remove mydevice
run losetup --detach /dev/loop0

section "3. Thin provisioning: a pool on sparse files, a thin device and a snapshot"
run dd if=/dev/zero of=metadata bs=1 count=0 seek=2G
run dd if=/dev/zero of=data bs=1 count=0 seek=100G
run losetup /dev/loop0 metadata
run losetup /dev/loop1 data
# 64 KiB blocks (128 sectors), low water mark 32768 blocks
run dmsetup create pool --table "0 20971520 thin-pool /dev/loop0 /dev/loop1 128 32768"
run dmsetup status pool
run dmsetup message /dev/mapper/pool 0 "create_thin 0"
run dmsetup create thin --table "0 2097152 thin /dev/mapper/pool 0"
run dmsetup status thin
# 192 KiB written: three 64 KiB blocks are provisioned, no more
seq 1 100000 | head -c 196608 > written.bin
run dd if=written.bin of=/dev/mapper/thin bs=64K oflag=direct conv=fsync
udevadm settle  # udev's probe of the written device is done before the suspend
run dmsetup status pool thin
# An internal snapshot: the origin is suspended while it is taken
run dmsetup suspend /dev/mapper/thin
run dmsetup message /dev/mapper/pool 0 "create_snap 1 0"
run dmsetup resume /dev/mapper/thin
run dmsetup create snap --table "0 2097152 thin /dev/mapper/pool 1"
# The snapshot shares all three blocks: no data block more in the pool
run dmsetup status
run dmsetup ls --tree
run md5sum written.bin
run sh -c 'dd if=/dev/mapper/snap bs=64K count=3 status=none | md5sum'
# The first write to a shared block copies it (copy on write): one data block more
run dd if=/dev/zero of=/dev/mapper/thin bs=64K count=1 seek=1 oflag=direct conv=fsync status=none
run dmsetup status pool thin snap
run sh -c 'dd if=/dev/mapper/snap bs=64K count=3 status=none | md5sum'
run sh -c 'dd if=/dev/mapper/thin bs=64K count=3 status=none | md5sum'
# The sparse files take only what was written
run du -k metadata data
udevadm settle
run dmsetup remove snap thin pool
run losetup -d /dev/loop0 /dev/loop1

section "4. What Docker 1.12 builds on loop-lvm"
mkdir -p devicemapper/devicemapper devicemapper/metadata
run dd if=/dev/zero of=devicemapper/devicemapper/data bs=1 count=0 seek=100G
run dd if=/dev/zero of=devicemapper/devicemapper/metadata bs=1 count=0 seek=2G
# Docker attaches the data file first, so the table reads 7:1 (metadata) 7:0 (data)
run losetup -f --show devicemapper/devicemapper/data
run losetup -f --show devicemapper/devicemapper/metadata
P=docker-253:0-2001-pool
run dmsetup create $P --table "0 209715200 thin-pool 7:1 7:0 128 32768 1 skip_block_zeroing"
run dmsetup table $P
run blockdev --getsize64 /dev/mapper/$P
# The base device: thin 1, 10 GiB; Docker counts its transactions in the pool
run dmsetup message $P 0 "create_thin 1"
run dmsetup message $P 0 "set_transaction_id 0 1"
run dmsetup create docker-253:0-2001-base --table "0 20971520 thin /dev/mapper/$P 1"
printf 'base file\n' > base.txt
run dd if=base.txt of=/dev/mapper/docker-253:0-2001-base bs=64K conv=sync,fsync oflag=direct status=none
udevadm settle
run dmsetup remove docker-253:0-2001-base
# Image layers from id 2, each a snapshot of the one below, the lowest of the base device
run dmsetup message $P 0 "create_snap 2 1"
run dmsetup message $P 0 "set_transaction_id 1 2"
run dmsetup message $P 0 "create_snap 3 2"
run dmsetup message $P 0 "set_transaction_id 2 3"
# The container: a snapshot of the top layer, the only one activated
run dmsetup message $P 0 "create_snap 4 3"
run dmsetup message $P 0 "set_transaction_id 3 4"
C=docker-253:0-2001-3b1a7c9e2f04d5a6
run dmsetup create $C --table "0 20971520 thin /dev/mapper/$P 4"
run sh -c "dd if=/dev/mapper/$C bs=10 count=1 status=none"
seq 1 100000 | head -c 262144 > layer.bin
run dd if=layer.bin of=/dev/mapper/$C bs=64K count=4 seek=8 oflag=direct conv=fsync status=none
run dmsetup status

section "5. Where are the layers? In the pool's metadata, activated or not"
# Only activated thins are devices; the metadata holds every thin of the pool.
run dmsetup ls
run ls /dev/mapper
udevadm settle
run dmsetup remove $C
run dmsetup message $P 0 "delete 4"
run dmsetup status $P
run dmsetup remove $P
run losetup -D
run thin_ls devicemapper/devicemapper/metadata
run du -k devicemapper/devicemapper/data devicemapper/devicemapper/metadata
run sh -c 'dmesg | grep device-mapper:'
