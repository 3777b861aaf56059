# Seed walkthrough, section 1: a loop device on an ordinary file (mkfs/mount left out).
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

run dd if=/dev/zero of=file.img bs=1MiB count=10
run stat -c "%s bytes, %b blocks: %n" file.img
run du -k file.img
run losetup --find --show file.img
run losetup -a
run blockdev --getsize64 /dev/loop0
run dd if=/dev/loop0 bs=1M count=1 status=none of=/dev/null
run losetup --detach /dev/loop0
run losetup -a
run losetup -f
# sparse files as the seed makes them
run dd if=/dev/zero of=sparse.img bs=1 count=0 seek=2G
run stat -c "%s bytes, %b blocks: %n" sparse.img
run du -k sparse.img
run losetup --find --show sparse.img
run blockdev --getsz /dev/loop0
run losetup --detach /dev/loop0
