# thin_ls: live through the metadata snapshot, on the metadata file, with -o fields and
# --no-headers, and its errors.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=1024 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 256 1024"
run dmsetup message pool 0 create_thin 0
run dmsetup message pool 0 create_thin 5
run dmsetup create thin0 --table "0 409600 thin /dev/mapper/pool 0"
run dmsetup create thin5 --table "0 2097152 thin /dev/mapper/pool 5"
seq 1 1000000 | head -c 1048576 > pattern.bin
run dd if=pattern.bin of=/dev/mapper/thin0 bs=128K count=6 oflag=direct conv=fsync status=none
run dd if=pattern.bin of=/dev/mapper/thin5 bs=128K count=1 seek=3 oflag=direct conv=fsync status=none
run dmsetup suspend thin0
run dmsetup message pool 0 create_snap 1 0
run dmsetup resume thin0
run dmsetup message pool 0 create_snap 2 1
run dd if=pattern.bin of=/dev/mapper/thin0 bs=128K count=2 seek=4 oflag=direct conv=fsync status=none
run dmsetup message pool 0 set_transaction_id 0 7
run dmsetup status pool
run thin_ls /dev/loop0
run thin_ls -m /dev/loop0
run dmsetup message pool 0 reserve_metadata_snap
run thin_ls -m /dev/loop0
run thin_ls --metadata-snap /dev/loop0
run thin_ls -m -o DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS /dev/loop0
run dmsetup message pool 0 release_metadata_snap
udevadm settle
run dmsetup remove thin0 thin5
run dmsetup remove pool
run losetup -D
run thin_ls meta.img
run thin_ls --no-headers meta.img
run thin_ls -o DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS meta.img
run thin_ls -o DEV,MAPPED_SECTORS,EXCLUSIVE_SECTORS,SHARED_SECTORS meta.img
run thin_ls -o DEV,MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES meta.img
run thin_ls -o DEV,MAPPED,EXCLUSIVE,SHARED meta.img
run thin_ls -o DEV,TRANSACTION,CREATE_TIME,SNAP_TIME meta.img
run thin_ls --format DEV,MAPPED meta.img
run thin_ls -o SHARED,DEV --no-headers meta.img
run thin_ls -o DEV,BOGUS meta.img
run thin_ls -o "" meta.img
run thin_ls -h
run thin_ls --version
run thin_ls
run thin_ls missing.img
dd if=/dev/zero of=zero.img bs=1M count=16 status=none
run thin_ls zero.img
