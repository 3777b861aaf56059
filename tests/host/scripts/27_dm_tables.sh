# Tables the kernel takes or refuses beyond the first load: reloads that change a pool's
# devices, a reload past the end of a device (refused only at resume), gaps and order in
# multi-target tables, devices without a table as table devices, and an external origin
# named like the pool.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=256 status=none
dd if=/dev/zero of=meta2.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=disk.img bs=1M count=0 seek=8 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run losetup -f --show meta2.img
run losetup -f --show disk.img
run dmsetup create pool --table "0 524288 thin-pool /dev/loop0 /dev/loop1 128 100"
run dmsetup reload pool --table "0 524288 thin-pool /dev/loop2 /dev/loop1 128 100"
run dmsetup reload pool --table "0 524288 thin-pool /dev/loop0 /dev/loop3 128 100"
run dmsetup info -c -o name,attr pool
run dmsetup create lin --table "0 8192 linear /dev/loop3 0"
run dmsetup reload lin --table "0 32768 linear /dev/loop3 0"
run dmsetup info -c -o name,attr lin
run dmsetup resume lin
run dmsetup info lin
run dmsetup table lin
run dmsetup table --inactive lin
run dmsetup resume lin
run dmsetup info -c -o name,attr lin
run dmsetup create gap --table "0 8 linear /dev/loop3 0
16 8 linear /dev/loop3 8"
run dmsetup create order --table "8 8 linear /dev/loop3 0
0 8 linear /dev/loop3 8"
run dmsetup create three --table "0 8 linear /dev/loop3 0
8 8 error
16 8 linear /dev/loop3 100"
run dmsetup table three
run dmsetup deps three
run dmsetup create errargs --table "0 8 error some arguments here"
run dmsetup table errargs
run dmsetup create --notable empty
run dmsetup create onempty --table "0 8 linear /dev/mapper/empty 0"
run dmsetup create onempty --table "0 8 linear /dev/dm-5 0"
run dmsetup create onempty --table "0 8 linear 254:5 0"
run dmsetup ls
run dmsetup create ondm --table "0 8 linear 254:1 0"
run dmsetup deps ondm
run dmsetup create sameorigin --table "0 8 thin /dev/mapper/pool 1 /dev/mapper/pool"
run dmsetup create badorigin --table "0 8 thin /dev/mapper/pool 1 /dev/nonexistent"
run sh -c "dmesg | grep device-mapper: | tail -n 20"
udevadm settle
run dmsetup remove_all
run losetup -D
