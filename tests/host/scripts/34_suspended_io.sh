# I/O sent to a suspended device waits for its resume (dm.c queues the bio while the device
# blocks I/O): the waiting dd holds the device open, other commands go on meanwhile, a
# remove is refused while it waits, and the resume lets it finish.  A suspended pool holds
# its active thins: their I/O waits too.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }
# until the device's open count is N (the background dd has opened it and waits), 30 s at most
opened() {
  for _ in $(seq 300); do
    [ "$(dmsetup info -c --noheadings -o open "$1")" = "$2" ] && return
    sleep 0.1
  done
  echo "the open count of $1 never reached $2"
}

dd if=/dev/zero of=meta.img bs=1M count=0 seek=16 status=none
dd if=/dev/zero of=data.img bs=1M count=0 seek=1024 status=none
run losetup -f --show meta.img
run losetup -f --show data.img
run dmsetup create pool --table "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 1024"
run dmsetup message pool 0 create_thin 0
run dmsetup create thin --table "0 409600 thin /dev/mapper/pool 0"
run dmsetup create other --table "0 8192 linear /dev/loop1 1048576"
udevadm settle
# a write to a suspended thin
run dmsetup suspend thin
printf 'A%.0s' $(seq 4096) > a.bin
dd if=a.bin of=/dev/mapper/thin bs=4K seek=3 oflag=direct status=none & writer=$!
opened thin 1
run dmsetup info -c -o name,attr,open thin
run dmsetup status thin
run dmsetup status pool
run dmsetup status other
run dmsetup message pool 0 create_thin 1
run dmsetup remove thin
run dmsetup resume thin
wait $writer; echo "dd rc=$?"
udevadm settle
run dmsetup info -c -o name,attr,open thin
run dmsetup status thin
run dmsetup status pool
# a read of a suspended thin
run dmsetup suspend thin
dd if=/dev/mapper/thin bs=4K skip=3 count=1 iflag=direct status=none > b.bin & reader=$!
opened thin 1
test -s b.bin || echo "nothing read yet"
run dmsetup resume thin
wait $reader; echo "dd rc=$?"
udevadm settle
cmp a.bin b.bin && echo "read back what was written"
# a suspended pool suspends its active thins (pool_presuspend): every bio to them waits,
# whether its block is mapped or not, though they do not show as suspended
run dmsetup suspend pool
dd if=a.bin of=/dev/mapper/thin bs=4K seek=3 oflag=direct status=none & mapped=$!
opened thin 1
dd if=a.bin of=/dev/mapper/thin bs=4K seek=100 oflag=direct status=none & unmapped=$!
opened thin 2
run dmsetup info -c -o name,attr,open thin
run dmsetup status pool
run dmsetup resume pool
wait $mapped; echo "dd rc=$?"
wait $unmapped; echo "dd rc=$?"
udevadm settle
run dmsetup status thin
run dmsetup status pool
run dmsetup remove thin
run dmsetup remove other
run dmsetup remove pool
run losetup -D
