# An ext4 on a thin: made, mounted, filled, files deleted (nothing returns to the pool),
# trimmed (whole blocks return), the thin snapshotted and the snapshot mounted beside it; pool
# and thin status and thin_ls after each step.  Real programs (mkfs.ext4, mount, umount,
# fstrim, md5sum) on the thins: under `thinsim run` they are real block devices over the model
# (thinsim/host/realdev.py), so the same kernel's ext4 drives real dm-thin and the model.
#
# What would make the pool's numbers depend on timing, and what takes it out:
# - mkfs.ext4 -E lazy_itable_init=0,lazy_journal_init=0: mkfs zeroes the inode tables and the
#   journal itself.  Otherwise the mount starts ext4lazyinit, which zeroes the inode tables
#   (provisioning their blocks) in the background at its own pace, and the journal's blocks
#   are provisioned as the journal first wraps.
# - mkfs.ext4 -E nodiscard: mkfs does not discard the device first; after a discard that
#   succeeded it may take the device's zeroes for granted and skip zeroing the inode tables.
# - mount -o noatime: a read would dirty the file's inode, which the journal writes at its
#   next commit (every 5 s, commit=), whenever that falls.
# - mount without -o discard (ext4's default, nodiscard): a deleted file's blocks are
#   discarded by fstrim only, when the script says, not at a journal commit.
# - dd conv=fsync for every file, then sync: the data and the journal reach the thin before
#   the status is printed (ext4 allocates delayed blocks at writeback, which the flusher
#   would otherwise start 30 s later or under memory pressure); sync also writes the
#   journalled metadata to its place.
# - the snapshot is taken with the file system unmounted: dm's suspend freezes a mounted
#   file system (lock_fs) and its thaw rewrites the superblock, a write the simulated
#   dmsetup suspend does not make.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=metadata bs=1M count=0 seek=8 status=none
dd if=/dev/zero of=data bs=1M count=0 seek=256 status=none
run losetup /dev/loop0 metadata
run losetup /dev/loop1 data
# 64 KiB blocks, 256 MiB of data (4096 blocks); one thin of 64 MiB
run dmsetup create pool --table "0 524288 thin-pool /dev/loop0 /dev/loop1 128 0"
run dmsetup message pool 0 "create_thin 0"
run dmsetup create thin --table "0 131072 thin /dev/mapper/pool 0"
run mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0,nodiscard /dev/mapper/thin
run dmsetup status pool thin
mkdir mnt snapmnt
seq 1 1000000 | head -c 4194304 > pattern
run mount -o noatime /dev/mapper/thin mnt
run dmsetup status pool thin
run dd if=pattern of=mnt/a bs=64K conv=fsync status=none
run dd if=pattern of=mnt/b bs=64K count=16 conv=fsync status=none
run sync
run dmsetup status pool thin
run md5sum pattern mnt/a mnt/b
# rm frees nothing in the pool: ext4 discards only when asked (fstrim, -o discard)
run rm mnt/a
run sync
run dmsetup status pool thin
run fstrim -v mnt
run dmsetup status pool thin
run umount mnt
# a snapshot of the unmounted thin shares all its blocks
run dmsetup suspend thin
run dmsetup message pool 0 "create_snap 1 0"
run dmsetup resume thin
run dmsetup create snap --table "0 131072 thin /dev/mapper/pool 1"
run dmsetup status pool thin snap
run mount -o noatime /dev/mapper/thin mnt
run mount -o noatime /dev/mapper/snap snapmnt
run md5sum mnt/b snapmnt/b
# the origin changes apart from the snapshot: copies on write, then a trim that unmaps the
# origin's blocks only (the snapshot keeps them)
run dd if=pattern of=mnt/c bs=64K count=32 conv=fsync status=none
run rm mnt/b
run sync
run dmsetup status pool thin snap
run fstrim -v mnt
run fstrim -v snapmnt
run dmsetup status pool thin snap
run md5sum snapmnt/b
run ls mnt snapmnt
run umount snapmnt
run umount mnt
run dmsetup message pool 0 reserve_metadata_snap
run thin_ls -m /dev/loop0
run dmsetup message pool 0 release_metadata_snap
udevadm settle
run dmsetup remove snap thin
run dmsetup status pool
run dmsetup remove pool
run losetup -D
run thin_ls metadata
run du -k data
