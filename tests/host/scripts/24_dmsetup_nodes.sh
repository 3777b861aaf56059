# dmsetup and the device nodes: a device without a table has no /dev/mapper link (until
# `dmsetup mknodes`), read-ahead settings, deferred removal cancelled, an external-origin
# thin's table and dependencies, read-only devices, inactive tables in reports.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=256 status=none
dd if=/dev/zero of=origin.img bs=1M count=0 seek=8 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run losetup -f --show origin.img
run dmsetup create --notable bare
run ls /dev/mapper
run test -e /dev/dm-0
run dmsetup info bare
run dmsetup info /dev/mapper/bare
run dmsetup ls -o blkdevname
run dmsetup mknodes bare
run ls /dev/mapper
run dmsetup info bare
run dmsetup info -c -o name,read_ahead bare
run dmsetup load bare --table "0 1024 linear /dev/loop2 0"
run ls /dev/mapper
run dmsetup info -c -o name,attr,read_ahead,segments bare
run dmsetup info -c --inactive -o name,attr,segments bare
run dmsetup deps --inactive bare
run dmsetup deps bare
run dmsetup resume bare
run ls /dev/mapper
run dmsetup create n123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 --table "0 8 linear /dev/loop2 0"
run dmsetup create pool --table "0 524288 thin-pool /dev/loop0 /dev/loop1 128 100"
run dmsetup message pool 0 "create_thin 1"
run dmsetup create ext --table "0 16384 thin /dev/mapper/pool 1 /dev/loop2"
run dmsetup table ext
run dmsetup status ext
run dmsetup deps ext
run dmsetup ls --tree -o ascii
run dmsetup ls --tree -o table,ascii
run dmsetup ls --tree -o status,ascii,compact
run dmsetup create ra1 --readahead +64 --table "0 2048 linear /dev/loop2 0"
run dmsetup create ra2 --readahead none --table "0 2048 linear /dev/loop2 0"
run dmsetup create ra3 --readahead 1000 --table "0 2048 linear /dev/loop2 0"
run dmsetup create ra4 --readahead auto --table "0 2048 linear /dev/mapper/ext 0"
run dmsetup create ra5 --readahead -5 --table "0 2048 linear /dev/loop2 0"
run dmsetup info -c -o name,read_ahead
run dmsetup suspend ra3
run dmsetup resume --readahead 2048 ra3
run dmsetup info -c -o name,read_ahead ra3
run dmsetup reload ra3 --table "0 4096 linear /dev/loop2 0"
run dmsetup resume ra3
run dmsetup info -c -o name,read_ahead ra3
run dmsetup create ro -r --table "0 2048 linear /dev/loop2 0"
run dmsetup info -c -o name,attr,readonly ro
run dmsetup reload ro --table "0 2048 linear /dev/loop2 0"
run dmsetup info -c --inactive -o name,attr,readonly ro
run dmsetup info -c -o name,attr,readonly ro
run dmsetup resume ro
run dmsetup info -c -o name,attr,readonly ro
run dmsetup create hold --table "0 1024 linear /dev/mapper/ra1 0"
run dmsetup remove --deferred ra1
run dmsetup info -c -o name,attr,open ra1
run dmsetup message ra1 0 @cancel_deferred_remove
run dmsetup info ra1
udevadm settle
run dmsetup remove hold
run dmsetup ls
run dmsetup remove --deferred ra1
run dmsetup ls
run dmsetup wait ra2 5
run dmsetup rename ra2 ra2b
run dmsetup info -c -o name,events ra2b
run dmsetup wait -v ra2b 0
udevadm settle
run dmsetup remove_all
run dmsetup ls
run losetup -D
