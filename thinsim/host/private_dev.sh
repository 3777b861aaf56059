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
# loop0-7, control nodes and the nodes of devices a persistent host already has
export THINSIM_PRIVATE_DEV=/dev
"${THINSIM_PYTHON:-python3}" -m thinsim.host.devnodes
exec "$@"
