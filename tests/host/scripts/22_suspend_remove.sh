# suspend/resume (with --noflush, --nolockfs), remove variants (--retry, -f, --deferred),
# remove_all, and what a suspended device does to status and info.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=1024 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup message pool 0 create_thin 0
run dmsetup message pool 0 create_thin 1
run dmsetup create thin0 --table "0 409600 thin /dev/mapper/pool 0"
run dmsetup create thin1 --table "0 409600 thin /dev/mapper/pool 1"
run dmsetup suspend thin0
run dmsetup suspend thin0
run dmsetup info -c -o name,attr,suspended
run dmsetup resume thin0
run dmsetup resume thin0
run dmsetup suspend --noflush thin0
run dmsetup resume --noflush thin0
run dmsetup suspend --nolockfs thin1
run dmsetup resume thin1
run dmsetup suspend thin0 thin1
run dmsetup info -c -o name,attr
run dmsetup resume thin0 thin1
# a suspended pool: messages still work, status answers
run dmsetup suspend pool
run dmsetup info -c -o name,attr
run dmsetup status
run dmsetup resume pool
# removing a suspended device
run dmsetup suspend thin1
run dmsetup remove thin1
run dmsetup ls
# deferred removal of an open device
run dmsetup create hold --table "0 1024 linear /dev/mapper/thin0 0"
run dmsetup remove --deferred thin0
run dmsetup info thin0
run dmsetup info -c -o name,attr,open
run dmsetup ls
run dmsetup remove hold
udevadm settle
run dmsetup ls
run dmsetup info thin0
# remove -f: the table becomes an error target if the device stays open
run dmsetup create thin0 --table "0 409600 thin /dev/mapper/pool 0"
run dmsetup create hold --table "0 1024 linear /dev/mapper/thin0 0"
run dmsetup remove -f thin0
run dmsetup table
run dmsetup remove --force hold
run dmsetup remove thin0
run dmsetup remove --retry pool
run dmsetup ls
# remove_all with stacked devices
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup create thin0 --table "0 409600 thin /dev/mapper/pool 0"
run dmsetup create thin1 --table "0 409600 thin /dev/mapper/pool 1"
udevadm settle
run dmsetup remove_all
run dmsetup ls
run losetup -D
run sh -c 'dmesg | grep device-mapper:'
