#!/bin/bash
exec > "${1:-out.txt}" 2>&1
set -x
modprobe dm-thin-pool; modprobe loop
mkdir -p /run/fullmd /run/fulldata
mount -t tmpfs -o size=8m tmpfs /run/fullmd
mount -t tmpfs -o size=16m tmpfs /run/fulldata
truncate -s 4M /run/fullmd/meta
truncate -s 256M /run/fulldata/data
losetup /dev/loop0 /run/fullmd/meta
losetup /dev/loop1 /run/fulldata/data
dd if=/dev/zero of=/dev/loop0 bs=4096 count=1 oflag=direct status=none
dmsetup create pool --table "0 524288 thin-pool /dev/loop0 /dev/loop1 128 0"
dmsetup message pool 0 "create_thin 0"
dmsetup create thin --table "0 2097152 thin /dev/mapper/pool 0"
dd if=/dev/urandom of=/dev/mapper/thin bs=64k count=4 oflag=direct conv=fsync status=none
dmsetup status pool
du -k /run/fullmd/meta /run/fulldata/data
dmesg | tail -5
echo ==== fill data fs
dd if=/dev/zero of=/run/fulldata/filler bs=4k status=none
df -k /run/fulldata
echo ==== whole-block direct write to a new block
dd if=/dev/urandom of=/dev/mapper/thin bs=64k count=2 seek=100 oflag=direct conv=fsync; echo rc=$?
dmsetup status pool
dmesg | tail -12
echo ==== partial-block direct write to a new block
dd if=/dev/urandom of=/dev/mapper/thin bs=4k count=1 seek=4000 oflag=direct conv=fsync; echo rc=$?
dmsetup status pool
dmesg | tail -12
echo ==== buffered write to a new block
dd if=/dev/urandom of=/dev/mapper/thin bs=64k count=1 seek=300 conv=fsync; echo rc=$?
dmsetup status pool
dmesg | tail -12
echo ==== overwrite of a mapped block
dd if=/dev/urandom of=/dev/mapper/thin bs=4k count=1 seek=1 oflag=direct conv=fsync; echo rc=$?
dmsetup status pool
dmesg | tail -6
rm /run/fulldata/filler
echo ==== fill metadata fs
dd if=/dev/zero of=/run/fullmd/filler bs=4k status=none
df -k /run/fullmd
dmsetup message pool 0 "create_thin 1"; echo rc=$?
dmsetup status pool
dmesg | tail -15
dmsetup message pool 0 "create_thin 2"; echo rc=$?
dd if=/dev/urandom of=/dev/mapper/thin bs=64k count=1 seek=500 oflag=direct conv=fsync; echo rc=$?
dd if=/dev/urandom of=/dev/mapper/thin bs=4k count=1 seek=1 oflag=direct conv=fsync; echo rc=$?
dmsetup status pool
dmesg | tail -8
dmsetup remove thin; dmsetup remove pool; echo rc=$?
dmesg | tail -8
du -k /run/fullmd/meta
thin_check /dev/loop0; echo rc=$?
thin_dump /dev/loop0
rm /run/fullmd/filler
dmsetup create pool --table "0 524288 thin-pool /dev/loop0 /dev/loop1 128 0"; echo rc=$?
dmsetup status pool
dmesg | tail -5
dmsetup remove pool
echo ==== EIO on metadata: dm-error under? skip
echo done
