# dmsetup ls: plain, --tree with its options (UTF-8 and C locales), --target, -o.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

run dmsetup ls
run dmsetup ls --tree
dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=1024 status=none
dd if=/dev/zero of=disk.img bs=1M count=0 seek=64 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run losetup -f --show disk.img
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup message pool 0 "create_thin 0"
run dmsetup create thin0 --table "0 409600 thin /dev/mapper/pool 0"
run dmsetup suspend thin0
run dmsetup message pool 0 "create_snap 1 0"
run dmsetup resume thin0
run dmsetup create snap1 -u SNAP-1 --table "0 409600 thin /dev/mapper/pool 1"
run dmsetup create lin --table "0 1024 linear /dev/loop2 0"
printf '0 1024 linear /dev/loop2 2048\n1024 1024 linear /dev/mapper/lin 0\n' | dmsetup create striped-ish
run dmsetup create a-very-long-device-name-that-goes-on-and-on-for-quite-a-while-0123456789 --table "0 100 linear /dev/mapper/snap1 0"
run dmsetup create --notable lonely
run dmsetup ls
run dmsetup ls --tree
run env LANG=C dmsetup ls --tree
run env LC_ALL=C.UTF-8 dmsetup ls --tree
run dmsetup ls --tree -o ascii
run dmsetup ls --tree -o utf
run dmsetup ls --tree -o vt100
run dmsetup ls --tree -o compact
run dmsetup ls --tree -o inverted
run dmsetup ls --tree -o inverted,ascii
run dmsetup ls --tree -o notrunc
run dmsetup ls --tree -o blkdevname
run dmsetup ls --tree -o nodevice
run dmsetup ls --tree -o active,open,rw,uuid
run dmsetup ls --tree -o device,ascii,notrunc
run dmsetup ls --tree -o bogus
run dmsetup ls --tree pool
run dmsetup ls --target thin-pool
run dmsetup ls --target thin
run dmsetup ls --target linear
run dmsetup ls --target error
run dmsetup ls --target bogus
run dmsetup ls -o devname
run dmsetup ls -o blkdevname
run dmsetup ls -o devno
run dmsetup ls -o bogus
run dmsetup ls --exec echo
run dmsetup ls pool
run dmsetup ls -c
udevadm settle
run dmsetup remove_all
run dmsetup ls
run dmsetup ls --tree
run dmsetup ls --target thin
run losetup -D
