# An xfs on a thin: made, mounted, filled, a file deleted (nothing returns to the pool),
# trimmed, a snapshot of it mounted beside it (nouuid: the same UUID); pool and thin status
# after each step.  Real mkfs.xfs, mount, umount and fstrim on the thins, as in
# 35_ext4_on_thin (under `thinsim run`: real block devices over the model).
#
# What would make the pool's numbers depend on timing, and what takes it out:
# - the status is printed with the file system unmounted: xfs writes its metadata to its
#   place (the inode chunks, the btree blocks of a new file) from its log in the
#   background (xfsaild) whenever the log's tail needs it, and sync only forces the log;
#   umount writes everything.
# - mkfs.xfs -K: no discard of the device first (on a new thin it unmaps nothing, but
#   say so).
# Not timing, but where the simulated device differs: mkfs.xfs -d noalign.  A thin's I/O
# hints are its block size (64 KiB), which mkfs.xfs takes for a stripe unit (on a volume
# this small it warns that it ignores it); the real loop device behind a simulated thin
# says 512 bytes (README).  noalign: both sides ignore the hints.
# - mount -o noatime: a read would dirty the file's inode, logged at some later point.
# fstrim without -v: what xfs says it trimmed is the kernel's (6.1 counts the free space it
# discarded, 6.18 the range it was given), not the pool's; the status says what was unmapped.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=metadata bs=1M count=0 seek=8 status=none
dd if=/dev/zero of=data bs=1M count=0 seek=1024 status=none
run losetup /dev/loop0 metadata
run losetup /dev/loop1 data
# 64 KiB blocks, 1 GiB of data; one thin of 512 MiB (mkfs.xfs wants 300 MiB at least)
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 0"
run dmsetup message pool 0 "create_thin 0"
run dmsetup create thin --table "0 1048576 thin /dev/mapper/pool 0"
run mkfs.xfs -q -K -d noalign /dev/mapper/thin
run dmsetup status pool thin
mkdir mnt snapmnt
seq 1 1000000 | head -c 4194304 > pattern
run mount -o noatime /dev/mapper/thin mnt
run dd if=pattern of=mnt/a bs=64K conv=fsync status=none
run dd if=pattern of=mnt/b bs=64K count=16 conv=fsync status=none
run umount mnt
run dmsetup status pool thin
run mount -o noatime /dev/mapper/thin mnt
run md5sum pattern mnt/a mnt/b
# rm frees nothing in the pool: xfs discards only when asked (fstrim, -o discard)
run rm mnt/a
run umount mnt
run dmsetup status pool thin
run mount -o noatime /dev/mapper/thin mnt
run fstrim mnt
run umount mnt
run dmsetup status pool thin
run dmsetup suspend thin
run dmsetup message pool 0 "create_snap 1 0"
run dmsetup resume thin
run dmsetup create snap --table "0 1048576 thin /dev/mapper/pool 1"
run mount -o noatime /dev/mapper/thin mnt
run mount -o noatime,nouuid /dev/mapper/snap snapmnt
run dd if=pattern of=mnt/c bs=64K count=32 conv=fsync status=none
run rm mnt/b
run md5sum snapmnt/b
run umount snapmnt
run umount mnt
run dmsetup status pool thin snap
run mount -o noatime /dev/mapper/thin mnt
run fstrim mnt
run ls mnt
run umount mnt
run dmsetup status pool thin snap
udevadm settle
run dmsetup remove snap thin
run dmsetup remove pool
run losetup -D
run thin_ls metadata
run du -k data
