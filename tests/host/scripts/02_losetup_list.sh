# losetup: attach in various ways, then every listing format.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=a.img bs=1M count=0 seek=64 status=none
dd if=/dev/zero of=b.img bs=1M count=0 seek=32 status=none
dd if=/dev/zero of=c.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=d.img bs=1M count=0 seek=8 status=none
run losetup -f
run losetup -f --show a.img
run losetup -f
run losetup --show -f b.img
run losetup /dev/loop5 c.img
run losetup -r -f --show d.img
run losetup -o 4096 --sizelimit 1048576 -f --show a.img
run losetup -f
run losetup -a
run losetup --all
run losetup -l
run losetup --list
run losetup -l -n
run losetup --list --noheadings
run losetup -l /dev/loop0
run losetup -l /dev/loop5 /dev/loop1
run losetup -l -O NAME,SIZELIMIT,OFFSET,AUTOCLEAR,RO,BACK-FILE,BACK-INO,BACK-MAJ:MIN,MAJ:MIN,PARTSCAN,DIO,LOG-SEC
run losetup --output NAME,BACK-FILE
run losetup -O NAME,RO,OFFSET
run losetup -l --raw
run losetup -l -J
run losetup --output-all
run losetup --list --output-all
run losetup /dev/loop0
run losetup /dev/loop3
run losetup -j a.img
run losetup -j a.img -o 4096
run losetup -j ./b.img
run losetup --associated "$PWD/c.img"
run losetup -j missing.img
run losetup -v -f --show b.img
# grow a backing file and tell the loop device
run blockdev --getsize64 /dev/loop0
dd if=/dev/zero of=a.img bs=1M count=0 seek=96 status=none
run blockdev --getsize64 /dev/loop0
run losetup -c /dev/loop0
run losetup --set-capacity /dev/loop0
run blockdev --getsize64 /dev/loop0
run losetup -d /dev/loop0 /dev/loop1
run losetup -l
run losetup -D
run losetup -a
run losetup -l
run losetup --list
run losetup -f
# the listing order for twelve devices (not numeric: /sys/block's order)
for i in 0 1 2 3 4 5 6 7 8 9 10 11; do
    dd if=/dev/zero of=f$i.img bs=1M count=0 seek=1 status=none
    losetup -f f$i.img
done
run losetup -a
run losetup -l -n -O NAME
run losetup -D
run losetup -a
