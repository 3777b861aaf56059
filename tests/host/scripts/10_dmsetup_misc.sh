# The remaining dmsetup subcommands: version, targets, deps -o, rename, wait, load/reload/clear,
# wipe_table, mknodes, mangle, splitname, udev*, setgeometry, measure, remove_all, usage.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

run dmsetup version
run dmsetup --version
run dmsetup targets
run dmsetup target-version thin-pool thin linear
run dmsetup target-version bogus
run dmsetup
run dmsetup bogus
run dmsetup --bogus
dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=1024 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup message pool 0 "create_thin 0"
run dmsetup create thin0 --table "0 409600 thin /dev/mapper/pool 0"
run dmsetup create lin --table "0 1024 linear /dev/mapper/thin0 0"
run dmsetup deps
run dmsetup deps pool
run dmsetup deps -o devname
run dmsetup deps -o devno pool
run dmsetup deps -o blkdevname
run dmsetup deps -o devname,devno
run dmsetup deps -o bogus pool
run dmsetup deps nosuchdev
# rename
run dmsetup rename lin lin2
run dmsetup ls
run dmsetup rename lin2 thin0
run dmsetup rename nosuchdev x
run dmsetup rename lin2 --setuuid LIN-UUID
run dmsetup info -c -o name,uuid lin2
run dmsetup rename lin2 --setuuid OTHER
# wait: returns at once when the event number is already past
run dmsetup wait pool 1
run dmsetup wait -v pool 3
run dmsetup info -c -o name,events
# reload a thin to grow it
run dmsetup load thin0 --table "0 819200 thin /dev/mapper/pool 0"
run dmsetup info thin0
run dmsetup table --inactive thin0
run dmsetup clear thin0
run dmsetup reload thin0 --table "0 819200 thin /dev/mapper/pool 0"
run dmsetup suspend thin0
run dmsetup resume thin0
run blockdev --getsz /dev/mapper/thin0
run dmsetup table thin0
run dmsetup wipe_table lin2
run dmsetup table lin2
run dmsetup status lin2
# device nodes
run dmsetup mknodes
run dmsetup mknodes thin0
run dmsetup mangle
run dmsetup mangle thin0
run ls /dev/mapper
run dmsetup splitname vg00-lvol1
run dmsetup splitname vg--name-lv--name-snap LVM
run dmsetup splitname pool
run dmsetup splitname a-b-c-d
run dmsetup splitname --noheadings --separator , vg-lv
run dmsetup splitname
run dmsetup udevcookies
run dmsetup udevcomplete_all
run dmsetup udevcomplete_all -y
run dmsetup udevflags 0
run dmsetup setgeometry thin0 100 16 63 0
run dmsetup measure
run dmsetup measure pool
run dmsetup stats list
run dmsetup create --concise "c1,,,,0 100 linear /dev/loop1 0;c2,C2-UUID,,ro,0 50 error,50 50 linear /dev/loop1 100"
run dmsetup table c1 c2
run dmsetup info -c -o name,attr,uuid c1 c2
run dmsetup create ra --readahead 1024 --table "0 2048 linear /dev/loop1 0"
run dmsetup info -c -o name,read_ahead ra
run blockdev --getra /dev/mapper/ra
run dmsetup table --concise
udevadm settle
run dmsetup remove_all
run dmsetup ls
run dmsetup remove_all
run losetup -D
