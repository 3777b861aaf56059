#!/bin/sh
# Metadata a real kernel wrote, for tests/test_thin_tools.py: run inside the VM
#   python -m thinsim.cli vm --rwdir "$PWD/tests/thin_tools_metadata" -- \
#       sh "$PWD/dev/thin_tools/make-metadata.sh" "$PWD/tests/thin_tools_metadata"
# Each NAME.md is a pool's metadata device after the pool was removed (NAME-held.md keeps a
# held metadata snapshot).  Deep mapping trees, a details tree of several levels, data
# blocks shared three ways (the data space map's reference count tree).
set -eu
out=$1
work=${THINSIM_SCRATCH:-/run}/ttm
mkdir -p "$work" && cd "$work"
py=$(command -v python3)

writes() { # device count seed: 4 KiB O_DIRECT writes at scattered 64 KiB blocks
  "$py" - "$@" <<'PY'
import mmap, os, random, sys
dev, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
size = os.lseek(fd, 0, os.SEEK_END)
buf = mmap.mmap(-1, 4096)
buf.write(bytes([seed % 256]) * 4096)
r = random.Random(seed)
for b in r.sample(range(size // 65536), n):
    os.pwritev(fd, [buf], b * 65536)
os.fsync(fd)
os.close(fd)
PY
}

mk() { # name md_size data_size
  truncate -s "$2" "$1.md"; truncate -s "$3" "$1.data"
  losetup /dev/loop0 "$1.md"; losetup /dev/loop1 "$1.data"
  dmsetup create pool --table "0 $(( $(stat -c %s "$1.data") / 512 )) thin-pool /dev/loop0 /dev/loop1 128 0"
}
fin() { # name
  dmsetup status pool > "$out/$1.status"
  udevadm settle
  for d in $(dmsetup ls | cut -f1 | grep -v '^pool$'); do dmsetup remove --retry "$d"; done
  dmsetup remove --retry pool; losetup -d /dev/loop0 /dev/loop1
  cp --sparse=always "$1.md" "$out/$1.md"
}

mk deep 8M 4G
dmsetup message pool 0 "create_thin 0"; dmsetup create t0 --table "0 8388608 thin /dev/mapper/pool 0"
writes /dev/mapper/t0 6000 1
dmsetup message pool 0 "create_snap 1 0"
writes /dev/mapper/t0 800 2
dmsetup message pool 0 "create_snap 2 1"
dmsetup create t2 --table "0 8388608 thin /dev/mapper/pool 2"
writes /dev/mapper/t2 500 3
dmsetup message pool 0 "create_thin 3"
dmsetup message pool 0 "set_transaction_id 0 11"
fin deep

mk many 4M 1G
dmsetup message pool 0 "create_thin 0"; dmsetup create t0 --table "0 2097152 thin /dev/mapper/pool 0"
writes /dev/mapper/t0 200 4
for i in $(seq 1 299); do dmsetup message pool 0 "create_snap $i 0"; done
writes /dev/mapper/t0 50 5
for i in $(seq 20 7 290); do dmsetup message pool 0 "delete $i"; done
fin many

mk shared-held 4M 1G
dmsetup message pool 0 "create_thin 7"; dmsetup create t7 --table "0 2097152 thin /dev/mapper/pool 7"
writes /dev/mapper/t7 900 6
dmsetup message pool 0 "create_snap 8 7"
dmsetup message pool 0 "create_snap 9 7"
dmsetup message pool 0 "reserve_metadata_snap"
writes /dev/mapper/t7 100 7
blkdiscard -o 0 -l 33554432 /dev/mapper/t7
dmsetup message pool 0 "create_snap 10 8"
fin shared-held
ls -la "$out"
