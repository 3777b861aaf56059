# losetup: error cases and what a busy (dm-held) loop device does when detached.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=a.img bs=1M count=0 seek=64 status=none
dd if=/dev/zero of=b.img bs=1M count=0 seek=64 status=none
: > empty.img
mkdir dir
run losetup -f --show missing.img
run losetup --find --show /nonexistent/x.img
run losetup /dev/loop0 missing.img
run losetup -f --show dir
run losetup -f --show empty.img
run losetup -a
run losetup -D
run losetup /dev/loop0 a.img
run losetup /dev/loop0 b.img
run losetup -f --show a.img
run losetup -a
run losetup -d /dev/loop3
run losetup --detach /dev/loop3
run losetup -d /dev/loop99
run losetup -d /dev/loop0 /dev/loop3
run losetup -a
run losetup -d
run losetup -c /dev/loop3
run losetup /dev/loop3
run losetup -l /dev/loop3
run losetup /dev/loop99
run losetup --show a.img
run losetup -f a.img b.img
run losetup -f a.img /dev/loop2
run losetup --bogus
run losetup -o junk -f a.img
run losetup -j
run losetup -O NAME,BOGUS
run losetup /dev/null a.img
run losetup /dev/loop1 /dev/loop0
run losetup -a
run losetup -D
# detaching a loop device that a dm device holds: autoclear, it goes away with the dm device
run losetup -f --show a.img
run dmsetup create lin --table "0 1024 linear /dev/loop0 0"
run losetup -d /dev/loop0
run losetup -a
run losetup -l
run losetup -f
run losetup -D
run losetup -a
run dmsetup remove lin
udevadm settle
run losetup -a
run losetup -f
run losetup -l
