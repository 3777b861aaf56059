# thin_check and thin_dump: on a live pool through the metadata snapshot, then on the
# deactivated pool's metadata file, and their error cases.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=1024 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup message pool 0 create_thin 0
run dmsetup message pool 0 create_thin 1
run dmsetup create thin0 --table "0 409600 thin /dev/mapper/pool 0"
run dmsetup create thin1 --table "0 204800 thin /dev/mapper/pool 1"
seq 1 1000000 | head -c 1048576 > pattern.bin
run dd if=pattern.bin of=/dev/mapper/thin0 bs=64K count=5 oflag=direct conv=fsync status=none
run dd if=pattern.bin of=/dev/mapper/thin0 bs=64K count=3 seek=100 oflag=direct conv=fsync status=none
run dd if=pattern.bin of=/dev/mapper/thin1 bs=64K count=2 seek=7 oflag=direct conv=fsync status=none
run dmsetup suspend thin0
run dmsetup message pool 0 create_snap 2 0
run dmsetup resume thin0
run dd if=pattern.bin of=/dev/mapper/thin0 bs=64K count=1 seek=1 oflag=direct conv=fsync status=none
run dmsetup message pool 0 set_transaction_id 0 42
run dmsetup status pool
# live: the metadata device is held by the pool
run thin_check /dev/loop0
run thin_dump /dev/loop0
run thin_dump -m /dev/loop0
run dmsetup message pool 0 reserve_metadata_snap
run dmsetup status pool
run thin_dump -m /dev/loop0
run thin_dump --metadata-snap /dev/loop0
run thin_dump -m -f human_readable /dev/loop0
run sh -c 'thin_dump -m$(dmsetup status pool | cut -d" " -f7) /dev/loop0 | head -3'
run thin_dump -m 1 /dev/loop0
run dmsetup message pool 0 release_metadata_snap
run dmsetup status pool
run thin_dump -m /dev/loop0
# deactivated: the metadata file itself
udevadm settle
run dmsetup remove thin0 thin1
run dmsetup remove pool
run losetup -D
run thin_check meta.img
run thin_check -q meta.img
run thin_check --super-block-only meta.img
run thin_check --skip-mappings meta.img
run thin_check --ignore-non-fatal-errors meta.img
run thin_check --clear-needs-check-flag meta.img
run thin_dump meta.img
run thin_dump -f xml meta.img
run thin_dump --format human_readable meta.img
run thin_dump --skip-mappings meta.img
run thin_dump --dev-id 1 meta.img
run thin_dump -r meta.img
run thin_dump -o out.xml meta.img
run cmp out.xml <(thin_dump meta.img)
run thin_dump --version
run thin_check --version
run thin_dump -V
run thin_dump -h
run thin_check -h
run thin_dump
run thin_check
run thin_dump -f bogus meta.img
run thin_dump --bogus meta.img
# broken inputs
run thin_check missing.img
run thin_dump missing.img
dd if=/dev/zero of=zero.img bs=1M count=16 status=none
run thin_check zero.img
run thin_dump zero.img
run thin_dump -r zero.img
dd if=/dev/zero of=small.img bs=1K count=2 status=none
run thin_check small.img
cp meta.img flipped.img
printf '\377' | dd of=flipped.img bs=1 seek=100 conv=notrunc status=none
run thin_check flipped.img
run thin_dump flipped.img
cp meta.img magic.img
printf 'XXXX' | dd of=magic.img bs=1 seek=32 conv=notrunc status=none
run thin_check magic.img
run thin_check .
# a tmpfs refuses O_DIRECT (kernel 6.1): the tools cannot open a file there
run cp meta.img /dev/shm/thinsim-meta.img
run thin_check /dev/shm/thinsim-meta.img
run thin_dump /dev/shm/thinsim-meta.img
run rm /dev/shm/thinsim-meta.img
