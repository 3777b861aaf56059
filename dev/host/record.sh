#!/bin/sh
# Record what the real host tools print for tests/host/scripts/*.sh, in one VM boot.
#
#   dev/host/record.sh [-o OUTDIR] [NAME...]
#
# Boots the stock Debian kernel with `thinsim vm` (thinsim/vm.py, vm-recipe.md), with the
# repository as the writable folder, and runs dev/host/record.py inside the guest for the
# named scripts (default: all), writing tests/host/recorded/NAME.{out,err,rc} (or into OUTDIR)
# and ENVIRONMENT.txt.  Every losetup/dmsetup runs inside the guest, never on this host.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/tests/host/recorded"
while getopts o: opt; do
    case $opt in
        o) out=$(mkdir -p "$OPTARG" && cd "$OPTARG" && pwd) ;;
        *) echo "usage: $0 [-o OUTDIR] [NAME...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

# The guest sees the host's root filesystem, so the same interpreter runs there.
python=$(python3 -c 'import sys; print(sys.executable)')

rwdirs="--rwdir $repo"
case "$out/" in
    "$repo"/*) ;;
    *) rwdirs="$rwdirs --rwdir $out" ;;
esac

cmd="cd '$repo' && '$python' dev/host/record.py --environment --out '$out'"
for name in "$@"; do
    cmd="$cmd '$name'"
done

# thinsim vm boots the VM (TCG or KVM, whichever works here) with dm-thin and loop loaded.
# shellcheck disable=SC2086  # rwdirs is a list of words
cd "$repo"
exec "$python" -m thinsim.cli vm $rwdirs --module 'brd rd_nr=1 rd_size=2097152' -- "$cmd"
