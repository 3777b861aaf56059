# dmsetup error cases: bad tables, duplicate names, busy devices, missing devices.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }
# create a device from a table; if the kernel accepts it after all, show it and remove it again
try_table() {
    run dmsetup create "$1" --table "$2"
    if dmsetup info "$1" >/dev/null 2>&1; then
        run dmsetup status "$1"
        udevadm settle
        run dmsetup remove "$1"
    fi
}

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=1024 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
# tables the kernel rejects (or dmsetup rejects before the kernel sees them)
try_table bad "0 2097152 bogus-target /dev/loop0"
try_table bad "0 2097152 thin-pool /dev/loop0 /dev/loop1 128"
try_table bad "0 2097152 thin-pool /dev/loop0 /dev/loop1 100 1024"
try_table bad "0 2097152 thin-pool /dev/loop0 /dev/loop1 64 1024"
try_table bad "0 2097152 thin-pool /dev/loop0 /dev/loop1 4194304 1024"
try_table bad "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 junk"
try_table bad "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024 1 bogus_feature"
try_table bad "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024 2 skip_block_zeroing"
try_table bad "0 2097152 thin-pool /dev/loop0 /dev/loop0 128 1024"
# loop7 exists (unattached, size 0): accepted; 7:99 makes the kernel create loop99
try_table bad "0 2097152 thin-pool /dev/loop0 /dev/loop7 128 1024"
try_table bad "0 2097152 thin-pool /dev/loop0 /dev/loop42 128 1024"
try_table bad "0 2097152 thin-pool /dev/nonexistent /dev/loop1 128 1024"
try_table bad "0 2097152 thin-pool 7:0 7:99 128 1024"
try_table bad "0 4194304 thin-pool /dev/loop0 /dev/loop1 128 1024"
try_table bad "0 2097152 linear /dev/loop1"
try_table bad "0 2097152 linear /dev/loop1 junk"
try_table bad "0 4194304 linear /dev/loop1 0"
try_table bad "100 2048 linear /dev/loop1 0"
try_table bad "0 0 linear /dev/loop1 0"
try_table bad "junk"
try_table bad "0 1024 thin /dev/mapper/nopool 0"
try_table bad "0 1024 thin /dev/loop1 0"
run dmsetup create "bad/name" --table "0 1024 linear /dev/loop1 0"
run dmsetup create
run dmsetup ls
run losetup -a
# the pool, a thin, and the errors around them
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup create pool2 --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
dd if=/dev/zero of=data2.img bs=1M count=0 seek=1024 status=none
run losetup -f --show data2.img
run dmsetup create pool2 --table "0 2097152 thin-pool /dev/loop0 /dev/loop2 128 1024"
# the data device is not checked: a second pool on the same data device is accepted
run dmsetup create pool2 --table "0 2097152 thin-pool /dev/loop2 /dev/loop1 128 1024"
run dmsetup table pool2
udevadm settle
run dmsetup remove pool2
run dmsetup create thin0 --table "0 1024 thin /dev/mapper/pool 0"
run dmsetup message pool 0 "create_thin 0"
run dmsetup create thin0 --table "0 1024 thin /dev/mapper/pool 0"
run dmsetup create thin0 --table "0 1024 thin /dev/mapper/pool 0"
# a second device on the same thin id is accepted
run dmsetup create thin0b --table "0 1024 thin /dev/mapper/pool 0"
try_table thinx "0 1024 thin /dev/mapper/pool 0 /dev/loop2"
try_table thinx "0 1024 thin /dev/mapper/pool"
try_table thinx "0 1024 thin /dev/mapper/pool 16777216"
try_table thinx "0 1024 thin /dev/mapper/pool -1"
try_table thinx "0 1024 thin /dev/mapper/pool abc"
try_table thinx "0 1024 thin /dev/mapper/pool 7"
run dmsetup ls
# busy devices
run dmsetup remove pool
run losetup -d /dev/loop2
run dmsetup create hold --table "0 1024 linear /dev/mapper/thin0 0"
run dmsetup remove thin0
run dmsetup remove --retry thin0
run dmsetup remove -f thin0
run dmsetup table
run dmsetup info -c -o name,attr,open
# missing devices
run dmsetup remove nosuchdev
run dmsetup remove --retry nosuchdev
run dmsetup remove
run dmsetup suspend nosuchdev
run dmsetup resume nosuchdev
run dmsetup message nosuchdev 0 "create_thin 1"
run dmsetup message /dev/mapper/nosuchdev 0 "create_thin 1"
run dmsetup load nosuchdev --table "0 1024 linear /dev/loop1 0"
run dmsetup deps nosuchdev
run dmsetup message pool
run dmsetup message pool 0
run dmsetup message pool x create_thin 1
udevadm settle
run dmsetup remove hold
run dmsetup remove thin0 thin0b
run dmsetup remove pool
run dmsetup remove pool
run losetup -D
run sh -c 'dmesg | grep device-mapper:'
