# blockdev on loop and dm devices.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=1024 status=none
dd if=/dev/zero of=odd.img bs=1000 count=1001 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run losetup -f --show odd.img
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup message pool 0 create_thin 0
run dmsetup create thin0 --table "0 409601 thin /dev/mapper/pool 0"
for dev in /dev/loop0 /dev/loop1 /dev/loop2 /dev/mapper/pool /dev/mapper/thin0 /dev/dm-1; do
    run blockdev --getsize64 $dev
    run blockdev --getsz $dev
    run blockdev --getsize $dev
    run blockdev --getss $dev
    run blockdev --getbsz $dev
    run blockdev --getpbsz $dev
    run blockdev --getiomin $dev
    run blockdev --getioopt $dev
    run blockdev --getro $dev
    run blockdev --getra $dev
    run blockdev --getmaxsect $dev
    run blockdev --getdiscardzeroes $dev
    run blockdev --getalignoff $dev
    run blockdev --flushbufs $dev
done
run blockdev --getsize64 --getsz --getss --getbsz /dev/mapper/thin0
run blockdev -v --getsize64 --getss --flushbufs /dev/mapper/thin0
run blockdev --report /dev/loop0 /dev/mapper/pool /dev/mapper/thin0
run blockdev --getsize64 /dev/mapper/nosuchdev
run blockdev --getsize64 data.img
run blockdev --getsize64
run blockdev --bogus /dev/loop0
run blockdev
run blockdev --getsize64 /dev/loop5
udevadm settle
run dmsetup remove thin0 pool
run losetup -D
