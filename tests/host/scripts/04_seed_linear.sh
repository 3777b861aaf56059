# Seed walkthrough, section 2: linear mapped devices, stacking, and the basic dmsetup commands.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=disk.img bs=1M count=0 seek=200 status=none
run losetup --find --show disk.img
run dmsetup create mydevice --table "0 204800 linear /dev/loop0 2048"
run dmsetup deps mydevice
run dmsetup info mydevice
run dmsetup ls
run dmsetup table mydevice
run dmsetup status mydevice
run ls /dev/mapper/
run readlink /dev/mapper/mydevice
run readlink -f /dev/mapper/mydevice
run blockdev --getsize64 /dev/mapper/mydevice
run dmsetup suspend mydevice
run dmsetup info mydevice
run dmsetup status mydevice
run dmsetup resume mydevice
run dmsetup info mydevice
# two segments, by major:minor, from stdin and from a file
printf '0 1024 linear /dev/loop0 0\n1024 2048 linear 7:0 8192\n' > two.table
run dmsetup create two two.table
printf '0 512 linear /dev/loop0 100000\n' | dmsetup create three
echo "rc=$?"
run dmsetup table two
run dmsetup table three
run dmsetup status two
# a mapped device on top of a mapped device
run dmsetup create upper --table "0 1000 linear /dev/mapper/mydevice 24"
run dmsetup create upper2 --table "0 100 linear 254:3 0"
run dmsetup deps upper upper2
run dmsetup table upper
run dmsetup info upper2
run dmsetup create err --table "0 100 error"
run dmsetup table err
run dmsetup status err
run dmsetup ls
run dmsetup table
run dmsetup status
run dmsetup deps
run dmsetup message mydevice 0 hello
udevadm settle
run dmsetup remove upper2
run dmsetup remove upper
run dmsetup remove mydevice two three err
run dmsetup ls
run losetup --detach /dev/loop0
run losetup -a
run sh -c 'dmesg | grep device-mapper:'
