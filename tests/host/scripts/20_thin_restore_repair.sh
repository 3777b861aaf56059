# thin_restore from XML and thin_repair, on a deactivated pool's metadata; the restored
# metadata activates again; error cases.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=1024 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup message pool 0 create_thin 0
run dmsetup create thin0 --table "0 409600 thin /dev/mapper/pool 0"
seq 1 1000000 | head -c 1048576 > pattern.bin
run dd if=pattern.bin of=/dev/mapper/thin0 bs=64K count=6 oflag=direct conv=fsync status=none
run dmsetup message pool 0 create_snap 1 0
run dd if=/dev/zero of=/dev/mapper/thin0 bs=64K count=1 seek=2 oflag=direct conv=fsync status=none
run dmsetup message pool 0 set_transaction_id 0 3
run sh -c 'dd if=/dev/mapper/thin0 bs=64K count=6 status=none | md5sum'
udevadm settle
run dmsetup remove thin0
run dmsetup remove pool
run losetup -d /dev/loop0
run thin_dump -o pool.xml meta.img
run cat pool.xml
# restore into a new file (sparse, same size) and into an existing one
dd if=/dev/zero of=restored.img bs=1M count=0 seek=16 status=none
run thin_restore -i pool.xml -o restored.img
run thin_check restored.img
run thin_dump restored.img
run cmp pool.xml <(thin_dump restored.img)
run thin_restore -q -i pool.xml -o restored.img
run thin_restore --input pool.xml --output restored2.img
run stat -c "%s bytes: %n" restored2.img
run thin_restore -i pool.xml -o restored.img --bogus
# a hand-edited XML: a new thin with one mapping
sed 's|</superblock>|  <device dev_id="9" mapped_blocks="1" transaction="0" creation_time="0" snap_time="0">\n    <single_mapping origin_block="0" data_block="0" time="0"/>\n  </device>\n</superblock>|' pool.xml > edited.xml
run thin_restore -i edited.xml -o restored.img
run thin_ls restored.img
# the restored metadata activates: the data is still there
run losetup -f --show restored.img
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup status pool
run dmsetup create thin0 --table "0 409600 thin /dev/mapper/pool 0"
run dmsetup create thin9 --table "0 409600 thin /dev/mapper/pool 9"
run sh -c 'dd if=/dev/mapper/thin0 bs=64K count=6 status=none | md5sum'
run sh -c 'dd if=/dev/mapper/thin9 bs=64K count=1 status=none | md5sum'
run sh -c 'head -c 65536 pattern.bin | md5sum'
udevadm settle
run dmsetup remove thin0 thin9
run dmsetup remove pool
run losetup -d /dev/loop0
# thin_repair
run thin_repair -i meta.img -o repaired.img
dd if=/dev/zero of=repaired.img bs=1M count=0 seek=16 status=none
run thin_repair -i meta.img -o repaired.img
run thin_check repaired.img
run cmp pool.xml <(thin_dump repaired.img)
run thin_repair --input meta.img --output repaired.img
# error cases
run thin_restore -i missing.xml -o restored.img
run thin_restore -i pool.xml
run thin_restore -o restored.img
run thin_restore
printf '<superblock>\n' > broken.xml
run thin_restore -i broken.xml -o restored.img
printf 'not xml at all\n' > junk.xml
run thin_restore -i junk.xml -o restored.img
run thin_check restored.img
dd if=/dev/zero of=tiny.img bs=4K count=2 status=none
run thin_restore -i pool.xml -o tiny.img
run thin_restore -i pool.xml -o /nonexistent/dir/x.img
run thin_repair -i missing.img -o repaired.img
dd if=/dev/zero of=zero.img bs=1M count=16 status=none
run thin_repair -i zero.img -o repaired.img
run thin_repair -i meta.img
run thin_repair
run thin_restore --version
run thin_repair --version
run thin_restore -h
run thin_repair -h
run losetup -D
