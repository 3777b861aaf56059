# dmsetup info: the long form and every column option.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

run dmsetup info
run dmsetup info -c
dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=1024 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup message pool 0 "create_thin 0"
run dmsetup message pool 0 "create_thin 1"
run dmsetup create thin0 --table "0 409600 thin /dev/mapper/pool 0"
run dmsetup create thin1 -u THIN-UUID-0001 --table "0 204800 thin /dev/mapper/pool 1"
run dmsetup create ro -r --table "0 1000 linear /dev/loop1 2097152"
run dmsetup create ro -r --table "0 1000 linear /dev/loop1 2096128"
run dmsetup info ro
run dmsetup table ro
run blockdev --getro /dev/mapper/ro
run dmsetup remove ro
run dmsetup create --notable empty
run dmsetup info
run dmsetup info pool thin1
run dmsetup info empty
run dmsetup info /dev/mapper/thin0
run dmsetup info /dev/dm-1
run dmsetup info -j 254 -m 2
run dmsetup info -u THIN-UUID-0001
run dmsetup info -c
run dmsetup info -C
run dmsetup info --columns
run dmsetup info -c --noheadings
run dmsetup info -c pool thin0
run dmsetup info -c -o name
run dmsetup info -c -o name,major,minor,attr,open,segments,events,uuid
run dmsetup info -c -o name,uuid --separator :
run dmsetup info -c -o name,blkdevname,devno,suspended,readonly,tables_loaded,segments
run dmsetup info -c -o name,devnos_used,blkdevs_used,devs_used,device_count,names_using_dev,devnos_using_dev,device_ref_count
run dmsetup info -c -o name,subsystem,lv_layer,vg_name,lv_name,mangled_name,unmangled_name,mangled_uuid,unmangled_uuid
run dmsetup info -c -o all
run dmsetup info -c --nameprefixes
run dmsetup info -c --nameprefixes --noheadings -o name,open
run dmsetup info -c -O -name
run dmsetup info -c -O minor -o name,minor
run dmsetup info -c -S 'name=~thin'
run dmsetup info -c -S 'open>0' -o name,open
run dmsetup info -c -o help
run dmsetup info -c -o bogus
run dmsetup help -c
run dmsetup help
run dmsetup info nosuchdev
run dmsetup info -c nosuchdev
run dmsetup info pool nosuchdev thin0
run dmsetup suspend thin0
run dmsetup info thin0
run dmsetup info -c -o name,attr,suspended thin0
run dmsetup resume thin0
run dmsetup load empty --table "0 100 linear /dev/loop1 0"
run dmsetup info empty
run dmsetup info -c -o name,attr,tables_loaded empty
run dmsetup info -c -o name,attr,live_table empty
run dmsetup info --inactive empty
run dmsetup resume empty
run dmsetup info empty
udevadm settle
run dmsetup remove_all
run dmsetup info
run losetup -D
