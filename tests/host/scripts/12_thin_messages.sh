# Pool messages: every message, and each way one fails (with its errno and kernel log line).
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=1024 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup create lin --table "0 1024 linear /dev/loop1 0"
run dmsetup message pool 0 create_thin 0
run dmsetup message pool 0 "create_thin 1"
run dmsetup message /dev/mapper/pool 0 create_thin 2
run dmsetup message /dev/dm-0 0 create_thin 3
run dmsetup message -j 254 -m 0 0 create_thin 4
run dmsetup message pool 0 create_thin 16777215
run dmsetup status pool
# EEXIST
run dmsetup message pool 0 create_thin 0
run dmsetup message pool 0 create_snap 1 0
# ENODATA
run dmsetup message pool 0 create_snap 10 99
run dmsetup message pool 0 delete 99
# EINVAL: ids, argument counts, unknown messages
run dmsetup message pool 0 create_thin 16777216
run dmsetup message pool 0 -- create_thin -1
run dmsetup message pool 0 create_thin abc
run dmsetup message pool 0 create_thin 0x10
run dmsetup message pool 0 create_thin
run dmsetup message pool 0 create_thin 1 2
run dmsetup message pool 0 create_snap 11
run dmsetup message pool 0 delete
run dmsetup message pool 0 bogus_message
run dmsetup message pool 0 CREATE_THIN 5
run dmsetup message pool 1 create_thin 5
run dmsetup message pool 0 set_transaction_id 1 2
run dmsetup message pool 0 set_transaction_id 0
run dmsetup message pool 0 set_transaction_id 0 x
run dmsetup message pool 0 set_transaction_id 0 5
run dmsetup message pool 0 set_transaction_id 5 6
run dmsetup message pool 0 release_metadata_snap
run dmsetup message pool 0 reserve_metadata_snap
run dmsetup status pool
run dmsetup message pool 0 reserve_metadata_snap
run dmsetup message pool 0 release_metadata_snap
run dmsetup message pool 0 release_metadata_snap
run dmsetup message pool 0 reserve_metadata_snap extra
# EBUSY: deleting an active thin
run dmsetup create thin2 --table "0 1024 thin /dev/mapper/pool 2"
run dmsetup message pool 0 delete 2
# snapshot of an active origin (allowed; the walkthrough suspends it first)
run dmsetup message pool 0 create_snap 20 2
run dmsetup message pool 0 delete 20
run dmsetup message pool 0 delete 1
run dmsetup message pool 0 delete 1
# messages to non-pools and to a suspended pool
run dmsetup message lin 0 create_thin 5
run dmsetup message thin2 0 create_thin 5
run dmsetup suspend thin2 pool
run dmsetup message pool 0 create_thin 5
run dmsetup resume pool thin2
run dmsetup status pool
# a read-only pool rejects metadata changes
udevadm settle
run dmsetup remove thin2
run dmsetup reload pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024 1 read_only"
run dmsetup suspend pool
run dmsetup resume pool
run dmsetup table pool
run dmsetup status pool
run dmsetup message pool 0 create_thin 6
run dmsetup message pool 0 delete 3
run dmsetup message pool 0 reserve_metadata_snap
run dmsetup message pool 0 set_transaction_id 5 6
run dmsetup remove lin pool
run losetup -D
run thin_ls meta.img
run sh -c 'dmesg | grep device-mapper:'
