# A pool whose metadata and data devices are dm devices (LVM's tmeta/tdata shape): linear
# devices at an offset into their loop devices, named as /dev/mapper/NAME, /dev/dm-N and
# MAJ:MIN.  Tables, status, deps, the tree, open counts, removes refused while the pool holds
# them, the data and metadata landing in the files at the linear targets' offsets.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=17 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=1025 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
# metadata: 16 MiB from 1 MiB into meta.img; data: 1 GiB from 1 MiB into data.img
run dmsetup create tmeta --table "0 32768 linear /dev/loop0 2048"
run dmsetup create tdata --table "0 2097152 linear /dev/loop1 2048"
run dmsetup create pool --table "0 4194304 thin-pool /dev/mapper/tmeta /dev/mapper/tdata 128 16"
run sh -c 'dmesg | grep device-mapper:'
run dmsetup create pool --table "0 2097152 thin-pool /dev/mapper/tmeta /dev/mapper/tdata 128 16"
run dmsetup status
run dmsetup table
run dmsetup deps
run dmsetup ls --tree
run dmsetup ls --tree -o blkdevname
run dmsetup info
run dmsetup info -c
run dmsetup message pool 0 create_thin 0
run dmsetup create thin --table "0 409600 thin /dev/mapper/pool 0"
run dmsetup info -c -o name,open
run sh -c 'seq 1 30000 | head -c 131072 | dd of=/dev/mapper/thin bs=64K iflag=fullblock oflag=direct conv=fsync status=none'
run dd if=/dev/mapper/thin of=out1 bs=64K count=2 iflag=direct status=none
run sh -c 'seq 1 30000 | head -c 131072 | cmp - out1'
run dmsetup status pool
run dmsetup status thin
# the first data block (64 KiB) at 1 MiB into data.img
run sh -c 'head -c 65536 out1 >block0; dd if=data.img bs=64K skip=16 count=1 status=none | cmp - block0 && echo data at 1 MiB'
run sh -c 'dd if=data.img bs=1M count=1 status=none | tr -d "\\0" | wc -c'
# removes the pool or thin prevents
udevadm settle
run dmsetup remove tdata
run dmsetup remove tmeta
run dmsetup remove pool
run dmsetup suspend tdata
run dmsetup info -c -o name,attr
run dmsetup resume tdata
run dmsetup reload pool --table "0 2097152 thin-pool /dev/dm-0 /dev/dm-1 128 16"
run dmsetup table --inactive pool
run dmsetup clear pool
run dmsetup message pool 0 reserve_metadata_snap
run sh -c 'dmsetup status pool'
run thin_dump -m /dev/mapper/tmeta
run dmsetup message pool 0 release_metadata_snap
udevadm settle
run dmsetup remove thin
run dmsetup remove pool
run dmsetup info -c -o name,open
run sh -c 'dmesg | grep device-mapper:'
# the metadata at 1 MiB into meta.img
run sh -c 'dd if=meta.img bs=1M skip=1 count=16 of=meta.copy status=none'
run thin_dump meta.copy
run thin_check /dev/mapper/tmeta
# again by /dev/dm-N and by MAJ:MIN
run dmsetup create pool --table "0 2097152 thin-pool /dev/dm-0 /dev/dm-1 128 16"
run dmsetup table pool
run dmsetup create thin --table "0 409600 thin /dev/mapper/pool 0"
run dd if=/dev/mapper/thin bs=64K count=2 iflag=direct status=none of=out2
run cmp out1 out2
run dmsetup status pool
udevadm settle
run dmsetup remove thin
run dmsetup remove pool
run dmsetup create pool --table "0 2097152 thin-pool 254:0 254:1 128 16"
run dmsetup table pool
run dmsetup ls --tree
udevadm settle
run dmsetup remove pool
# a pool over a linear device shorter than its table, and over a device with no table
run dmsetup create small --table "0 1048576 linear /dev/loop1 2048"
run dmsetup create pool --table "0 2097152 thin-pool /dev/mapper/tmeta /dev/mapper/small 128 16"
run dmsetup create empty --notable
run dmsetup create pool --table "0 2097152 thin-pool /dev/mapper/tmeta /dev/mapper/empty 128 16"
run dmsetup create pool --table "0 2097152 thin-pool /dev/mapper/tmeta /dev/mapper/tmeta 128 16"
run dmsetup create pool --table "0 2097152 thin-pool /dev/mapper/tmeta /dev/dm-0 128 16"
run dmsetup ls
run sh -c 'dmesg | grep device-mapper:'
udevadm settle
run dmsetup remove empty small tdata tmeta
run dmsetup ls
