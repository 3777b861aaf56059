# dmsetup reports: --rows, --count 1, more selections (quoted regexes, !~, ',' and '#'),
# -c with commands that have no report, and the options that change nothing visible.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=256 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run dmsetup create pool --table "0 524288 thin-pool /dev/loop0 /dev/loop1 128 100"
run dmsetup message pool 0 "create_thin 1"
run dmsetup create thin1 -u T-1 --table "0 16384 thin /dev/mapper/pool 1"
run dmsetup create lin -U 0 -G 6 -M 640 --table "0 2048 linear /dev/mapper/thin1 0"
run dmsetup info -c --rows
run dmsetup info -c --rows --noheadings
run dmsetup info -c --rows --separator '|' -o name,minor,uuid
run dmsetup info -c --rows -O -minor -o name,minor
run dmsetup info -c --count 1 -o name
run dmsetup info -c -S 'name=~"^p"' -o name
run dmsetup info -c -S "name!~'t'" -o name
run dmsetup info -c -S 'open=0 # segments>1' -o name,open,segments
run dmsetup info -c -S 'name=pool,open>0' -o name
run dmsetup info -c -S 'minor=~1' -o name,minor
run dmsetup info -c -S 'uuid=T-1' -o name,uuid
run dmsetup info -c -S 'name=' -o name
run dmsetup info -c -S 'name=~' -o name
run dmsetup info -c -S '(name=pool' -o name
run dmsetup info -c -S '!name=pool' -o name
run dmsetup info -c -S 'name="pool' -o name
run dmsetup info -c -S 'open>x' -o name
run dmsetup -c version
run dmsetup -c targets
run dmsetup -c ls
run dmsetup -c status pool
run dmsetup table -c -O name
run dmsetup help -c -o name
run dmsetup info -c --units m -o name
run dmsetup stats bogus
run dmsetup ls --tree -o table,ascii
run dmsetup ls --tree -o nodevice,blkdevname,ascii
run dmsetup deps -o blkdevname -v lin
run dmsetup info --checks pool
run dmsetup suspend --checks thin1
run dmsetup resume --checks thin1
run dmsetup ls --tree -o active,ascii,notrunc
udevadm settle
run dmsetup remove_all
run losetup -D
