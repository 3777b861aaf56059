# dmsetup edge cases: option parsing errors, report options (-o +field, -O, -S errors,
# --separator with --nameprefixes, --unquoted), selection applied to other commands,
# concise tables with quoting, renames that fail, messages dmsetup handles itself.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=disk.img bs=1M count=0 seek=64 status=none
run losetup -f --show disk.img
# option parsing
run dmsetup -x info
run dmsetup info -o
run dmsetup --no info
run dmsetup --tree=1 ls
run dmsetup info -j 254
run dmsetup create x --table "0 8 error" --notable
run dmsetup --verbose
run dmsetup create
run dmsetup create a b c
# tables from files and stdin, comments, bad lines
printf '# a comment\n\n0 1024 linear /dev/loop0 0 # trailing\n1024 1024 linear /dev/loop0 4096\n' > t1.table
run dmsetup create t1 t1.table
run dmsetup table t1
printf '0 1024 linear /dev/loop0 0\nnot a table line\n' > bad.table
run dmsetup create t2 bad.table
run dmsetup create t2 missing.table
printf '0 512 error\n' | dmsetup create t3
echo "rc=$?"
# (an empty table on stdin would create a device without a table and then wait forever
# for a udev event that never comes: --notable turns udev synchronisation off)
run dmsetup create --notable t4
run dmsetup info t4
run dmsetup table t4
run dmsetup create u1 -u "UUID,with;odd\\chars" --table "0 8 error"
run dmsetup create u2 -u "UUID,with;odd\\chars" --table "0 8 error"
run dmsetup table --concise u1 t1
run dmsetup create -j 254 -m 40 m40 --table "0 8 error"
run dmsetup info -c -o name,minor m40
# concise creation errors
run dmsetup create --concise "c1,,,,0 8 error;c2,,"
run dmsetup create --concise "c3,,,xx,0 8 error"
run dmsetup create --concise "c4,,,,0 8 error\\"
run dmsetup create --concise --uuid X "c5,,,,0 8 error"
run dmsetup create --concise a b
run dmsetup ls
# reports
run dmsetup info -c -o +name,devno
run dmsetup info -c -o name,open -O -open,name
run dmsetup info -c -O bogus
run dmsetup info -c -O -
run dmsetup info -c --separator , --nameprefixes -o name,uuid t1 u1
run dmsetup info -c --nameprefixes --unquoted -o name,uuid t1 u1
run dmsetup info -c -o name,selected -S 'name=t1'
run dmsetup info -c -S 'bogus=1'
run dmsetup info -c -S 'name<1'
run dmsetup info -c -S 'minor>=3 && minor<40' -o name,minor
run dmsetup info -c -S '(name=t1 || name=t3) && !(minor=0)' -o name
run dmsetup info -c -S 'uuid=""' -o name
run dmsetup info -c -o name,read_ahead,attr t3 t4
run dmsetup info -c -o name -O name --noheadings --separator ' | '
run dmsetup info -c -o device_count,devs_used,names_using_dev t1
run dmsetup info -c -o name_all t1
run dmsetup info -c -o info_all t1
run dmsetup splitname -o subsystem,vg_name LVM-x vg-lv
run dmsetup splitname -o vg_name,lv_name "a--b-c--d-e-f"
run dmsetup splitname "trailing-" LVM
run dmsetup splitname x OTHER
# selection on other commands
run dmsetup suspend -S 'name=~^t'
run dmsetup info -c -o name,attr
run dmsetup resume -S 'attr=~s'
run dmsetup info -c -o name,attr
run dmsetup status -S 'name=t3'
# renames
run dmsetup rename t3 bad/name
run dmsetup rename t3 ""
run dmsetup rename -u "UUID,with;odd\\chars" t3b
run dmsetup rename t3 --setuuid "UUID,with;odd\\chars"
run dmsetup rename -j 254 -m 40 m40b
run dmsetup rename t4 t4b
run dmsetup info -c -o name,events,uuid
# messages and geometry
run dmsetup message t1 0 @cancel_deferred_remove
run dmsetup message t1 0 @cancel_deferred_remove now
run dmsetup message t1 99999 hello
run dmsetup message t1 -1 hello
run dmsetup message t1 0x10 hello
run dmsetup setgeometry t1 1 1 1 5
run dmsetup setgeometry t1 x 1 1 0
run dmsetup setgeometry t1 70000 1 1 0
# load/clear/wait/remove by uuid and number
run dmsetup load -u "UUID,with;odd\\chars" --table "0 16 error"
run dmsetup info -c -o name,attr,segments -u "UUID,with;odd\\chars"
run dmsetup clear -j 254 -m 40
run dmsetup wait -u NOSUCH
run dmsetup suspend -u NOSUCH
run dmsetup info -j 254 -m 99
run dmsetup status -j 254 -m 99
run dmsetup info --noopencount t1
run dmsetup info -c --noopencount -o name,open t1
run dmsetup status -v t1 t3
run dmsetup deps -v t1
run dmsetup table --concise -v t1
run dmsetup ls --tree -o compact,ascii,notrunc
run dmsetup ls --tree -o uuid,rw,ascii
run dmsetup ls --tree -o inverted,compact,ascii
run dmsetup ls -o devname,bogus
run dmsetup mknodes t4b
run ls /dev/mapper
udevadm settle
run dmsetup remove -S 'name=~^c'
run dmsetup ls
run dmsetup remove_all
run dmsetup ls
run losetup -D
