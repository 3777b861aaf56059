# `thinsim bench --host`'s commands on a real kernel, for the figure beside the simulated host's
# in benchmarks/README.md:
#   thinsim run --backend kernel benchmarks/kernel_host_commands.sh
# (in thinsim's VM when this machine has no dm-thin; without KVM the VM's CPU is emulated, so
# its figures are an upper bound for a real host's).  The same set-up and loop as the bench's,
# the same keys, without the full-pool figure: the kernel's per-command cost does not depend
# on how full the pool is, and the VM's RAM disk cannot hold the full pool's metadata restore.
set -eu
N=${N:-100}
truncate -s 64M meta.img; truncate -s 2G data.img
meta=$(losetup -f --show meta.img); data=$(losetup -f --show data.img)
dmsetup create pool --table "0 4194304 thin-pool $meta $data 128 0"
dmsetup message pool 0 create_thin 0
dmsetup create thin --table "0 2097152 thin /dev/mapper/pool 0"
udevadm settle

t() { local s=$EPOCHREALTIME; "$@" > /dev/null; local e=$EPOCHREALTIME; echo $(( ${e/./} - ${s/./} )); }
for i in $(seq 1 "$N"); do
  t dmsetup status pool
  t dmsetup message pool 0 set_transaction_id $((i - 1)) $i
  t dd if=/dev/zero of=/dev/mapper/thin bs=4K count=1 seek=$i status=none
done | sort -n | awk '{ us[NR] = $1 } END {
    printf "{\"host_cmd_ms_p50\": %.2f, \"host_cmd_ms_p99\": %.2f, \"commands\": %d}\n",
        us[int((NR + 1) / 2)] / 1000, us[int(NR * 0.99 + 0.5)] / 1000, NR
}'
udevadm settle
dmsetup remove thin pool
losetup -d "$meta" "$data"
