# A loop device keeps the file it was given open (drivers/block/loop.c: lo_backing_file is a
# struct file): after mv its name follows the file, after rm it reads " (deleted)", and its
# I/O (data and a pool's metadata) keeps going to that file, never to a new file of the same
# name.  Then dmsetup --exec running thin tools, blockdev and dmsetup itself on each device.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }
sum() { dd if="$1" bs=64K count=2 status=none | md5sum; }

seq 1 100000 > pattern
run sum pattern
# the pool's files first: no file shown below gets an inode number freed before (ext4 would
# hand it out again, another file system need not)
run dd if=/dev/zero of=md.img bs=1MiB count=4 status=none
run dd if=/dev/zero of=data.img bs=1MiB count=0 seek=64 status=none
run dd if=/dev/zero of=a.img bs=1MiB count=8 status=none
run losetup --find --show a.img
run losetup -a
run cat /sys/block/loop0/loop/backing_file
# renamed: the kernel's name follows the file, I/O goes to it
run mv a.img b.img
run losetup -a
run losetup -l
run losetup /dev/loop0
run cat /sys/block/loop0/loop/backing_file
run losetup -j b.img
run losetup -j a.img
run dd if=pattern of=/dev/loop0 bs=64K count=2 oflag=direct conv=fsync status=none
run sum b.img
run truncate -s 16M b.img
run losetup -c /dev/loop0
run blockdev --getsize64 /dev/loop0
# deleted: the device still reads and writes the file it holds
run rm b.img
run losetup -a
run losetup -l
run losetup -l --raw
run losetup --list --json
run cat /sys/block/loop0/loop/backing_file
run sum /dev/loop0
run dd if=/dev/zero of=b.img bs=1MiB count=8 status=none
run dd if=pattern of=/dev/loop0 bs=64K count=2 seek=2 oflag=direct conv=fsync status=none
run sum b.img
run losetup -j b.img
run losetup -a
run dd if=/dev/loop0 bs=64K count=2 skip=2 status=none of=copy
run sum copy
run blockdev --getsize64 /dev/loop0
run blkdiscard -o 0 -l 65536 /dev/loop0
run sum /dev/loop0
run losetup -d /dev/loop0
run losetup -a
run sum b.img
# a pool on two files that are then renamed and deleted
run losetup -f --show md.img
run losetup -f --show data.img
run dmsetup create pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 0"
run dmsetup message pool 0 create_thin 0
run dmsetup create thin0 --table "0 65536 thin /dev/mapper/pool 0"
run dd if=pattern of=/dev/mapper/thin0 bs=64K count=2 oflag=direct conv=fsync status=none
run mv md.img md2.img
run mv data.img data2.img
run losetup -a
run dmsetup message pool 0 create_thin 1
run dmsetup status pool
run thin_check md2.img
run rm md2.img
run dd if=/dev/zero of=md2.img bs=1MiB count=4 status=none
run dmsetup message pool 0 create_thin 2
run dmsetup status pool
run sum md2.img
run thin_check md2.img
run thin_check /dev/loop0
run dmsetup message pool 0 reserve_metadata_snap
run thin_dump -m /dev/loop0
run dmsetup message pool 0 release_metadata_snap
run losetup -l
# dmsetup --exec: the command with the device's path appended, once per device
run dmsetup ls --exec thin_dump
run dmsetup ls --target thin --exec "blockdev --getsize64"
run dmsetup ls --exec "dmsetup info -c --noheadings"
run dmsetup -v ls --target thin-pool --exec "dmsetup table"
run dmsetup ls --exec "thin_check -q"
run udevadm settle
run dmsetup remove thin0
run dmsetup remove pool
# the metadata went to the deleted file the loop device holds
run thin_check /dev/loop0
run thin_ls /dev/loop0
run dmsetup create pool --table "0 131072 thin-pool /dev/loop0 /dev/loop1 128 0"
run dmsetup status pool
run dmsetup create thin0 --table "0 65536 thin /dev/mapper/pool 0"
run sum /dev/mapper/thin0
run rm data2.img
run dd if=pattern of=/dev/mapper/thin0 bs=64K count=2 seek=4 oflag=direct conv=fsync status=none
run dmsetup status thin0
run dd if=/dev/mapper/thin0 bs=64K count=2 skip=4 status=none of=copy
run sum copy
run losetup -a
run udevadm settle
run dmsetup remove thin0
run dmsetup remove pool
run losetup -D
run losetup -a
run ls
