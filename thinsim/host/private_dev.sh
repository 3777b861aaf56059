# Run "$@" with a private /dev: only harmless nodes (null, zero, random, tty, pts ...),
# so that no path in a script can reach a real loop or device-mapper node of the host.
# Run inside a new mount namespace (unshare --mount); see thinsim/host/run.py.
set -e
real=$(mktemp -d /tmp/thinsim-realdev.XXXXXX)
mount --bind /dev "$real"
mount -t tmpfs -o mode=755,size=1m thinsim-dev /dev
for n in null zero full random urandom tty ptmx; do
  if [ -e "$real/$n" ]; then : > "/dev/$n"; mount --bind "$real/$n" "/dev/$n"; fi
done
for d in pts shm; do mkdir "/dev/$d"; mount --bind "$real/$d" "/dev/$d"; done
ln -s /proc/self/fd /dev/fd; ln -s /proc/self/fd/0 /dev/stdin; ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
mkdir /dev/mapper
umount -l "$real"; rmdir "$real"
# The sysfs folders that name block devices get a tmpfs each too (thinsim/host/sysfs.py fills
# them with the simulated devices), so no path under /sys shows a real loop or dm device, or
# lets a write reach one.  A folder that cannot be hidden ends the set-up here (set -e):
# thinsim run then says it has no private /dev.  An inherited THINSIM_PRIVATE_SYS means nothing.
unset THINSIM_PRIVATE_SYS
if [ -d /sys/block ]; then
  for d in block class/block dev/block devices/virtual/block; do
    if [ -d "/sys/$d" ]; then mount -t tmpfs -o mode=755,size=4m thinsim-sys "/sys/$d"; fi
  done
  export THINSIM_PRIVATE_SYS=/sys
fi
# loop0-7, control nodes and the nodes of devices a persistent host already has; with thinsim
# run's own python and thinsim (the package this file is in), not one found elsewhere
export THINSIM_PRIVATE_DEV=/dev
"${THINSIM_PYTHON:-python3}" -c 'import sys; sys.path.insert(0, sys.argv[1])
from thinsim.host.devnodes import main; sys.exit(main())' "$(dirname "$0")/../.."
exec "$@"
