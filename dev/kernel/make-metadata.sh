set -e
cd /run/k && rm -f *
mk() { # name md data
  truncate -s $2 $1.md; truncate -s $3 $1.data
  losetup /dev/loop0 $1.md; losetup /dev/loop1 $1.data
  dmsetup create pool --table "0 $(( $(stat -c %s $1.data) / 512 )) thin-pool /dev/loop0 /dev/loop1 128 0"
}
fin() { # name
  dmsetup status pool > /work/probe2/kmeta/$1.status
  udevadm settle; for d in $(dmsetup ls | cut -f1 | grep -v pool); do dmsetup remove --retry $d; done
  dmsetup remove --retry pool; losetup -d /dev/loop0 /dev/loop1
  cp --sparse=always $1.md /work/probe2/kmeta/$1.md


}
mk basic 2M 256M
dmsetup message pool 0 "create_thin 0"; dmsetup create t0 --table "0 524288 thin /dev/mapper/pool 0"
dd if=/dev/urandom of=/dev/mapper/t0 bs=64k count=300 oflag=direct conv=fsync status=none
dmsetup message pool 0 "create_snap 1 0"; dmsetup message pool 0 "set_transaction_id 0 7"
dd if=/dev/urandom of=/dev/mapper/t0 bs=4k count=3 seek=100 oflag=direct conv=fsync status=none
for i in $(seq 2 140); do dmsetup message pool 0 "create_snap $i 1"; done
dmsetup message pool 0 "delete 5"
blkdiscard -o 655360 -l 1310720 /dev/mapper/t0
dmsetup status pool >/dev/null
fin basic
mk held 2M 256M
dmsetup message pool 0 "create_thin 3"; dmsetup create t3 --table "0 524288 thin /dev/mapper/pool 3"
dd if=/dev/urandom of=/dev/mapper/t3 bs=64k count=20 oflag=direct conv=fsync status=none
dmsetup message pool 0 reserve_metadata_snap
dd if=/dev/urandom of=/dev/mapper/t3 bs=4k count=2 seek=50 oflag=direct conv=fsync status=none
dmsetup status pool >/dev/null
thin_dump -m /dev/loop0 > /work/probe2/kmeta/held.xml-m || true
fin held
