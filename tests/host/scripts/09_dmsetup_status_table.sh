# dmsetup status and table, with and without names and with their options.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

run dmsetup status
run dmsetup table
dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=1024 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 256 100 3 skip_block_zeroing ignore_discard error_if_no_space"
run dmsetup message pool 0 "create_thin 7"
run dmsetup create thin7 --table "0 1048576 thin /dev/mapper/pool 7"
run dmsetup create --notable empty
run dmsetup status
run dmsetup table
run dmsetup status pool
run dmsetup table pool
run dmsetup status thin7
run dmsetup table thin7
run dmsetup status empty
run dmsetup table empty
run dmsetup status pool thin7
run dmsetup table thin7 pool
run dmsetup status /dev/mapper/pool
run dmsetup table /dev/dm-1
run dmsetup status -j 254 -m 1
run dmsetup status --target thin
run dmsetup status --target thin-pool
run dmsetup table --target thin-pool
run dmsetup table --target linear
run dmsetup status --noflush pool
run dmsetup status --noflush
run dmsetup table --showkeys
run dmsetup table --concise
run dmsetup table --concise pool
run dmsetup status -v pool
run dmsetup table -v thin7
run dd if=/dev/zero of=/dev/mapper/thin7 bs=128K count=5 oflag=direct conv=fsync status=none
run dmsetup status
run dmsetup status --noflush thin7
# a thin whose length is not a multiple of the block size, a thin on a missing id
run dmsetup create odd --table "0 1000 thin /dev/mapper/pool 7"
run dmsetup status odd
run dmsetup create ghost --table "0 1000 thin /dev/mapper/pool 9"
run dmsetup status ghost
# suspended: status still answers; --noflush does not commit
run dmsetup suspend thin7 pool
run dmsetup status pool
run dmsetup status --noflush pool
run dmsetup info -c -o name,attr
run dmsetup resume pool thin7
# an inactive table
run dmsetup load empty --table "0 2048 linear /dev/loop1 0"
run dmsetup table empty
run dmsetup table --inactive empty
run dmsetup status --inactive empty
run dmsetup clear empty
run dmsetup table --inactive empty
run dmsetup status nosuchdev
run dmsetup table nosuchdev
run dmsetup status pool nosuchdev
run dmsetup status --target
run dmsetup table --target bogus
udevadm settle
run dmsetup remove odd thin7 empty
run dmsetup remove pool
run losetup -D
