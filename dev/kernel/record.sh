#!/bin/sh
# Record scenario transcripts on a real 6.1 kernel, in one VM boot (see vm-recipe.md).
#
#   dev/kernel/record.sh [-o OUTDIR] [-v] [NAME...]
#
# Boots the stock Debian kernel with `thinsim vm` (thinsim/vm.py) and runs record.py inside it
# for the named scenarios (default: all), writing tests/kernel/recorded/NAME.txt (or
# OUTDIR/NAME.txt) and ENVIRONMENT.txt.  Everything kernel-side happens inside the guest.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/tests/kernel/recorded"
verbose=""
while getopts o:v opt; do
    case $opt in
        o) out=$(mkdir -p "$OPTARG" && cd "$OPTARG" && pwd) ;;
        v) verbose="-v" ;;
        *) echo "usage: $0 [-o OUTDIR] [-v] [NAME...]" >&2; exit 2 ;;
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

cmd="cd '$repo' && '$python' dev/kernel/record.py --environment $verbose --out '$out'"
for name in "$@"; do
    cmd="$cmd '$name'"
done

# thinsim vm boots the VM (TCG or KVM, whichever works here) with dm-thin and loop loaded.
# shellcheck disable=SC2086  # rwdirs is a list of words
cd "$repo"
exec "$python" -m thinsim.cli vm $rwdirs -- "$cmd"
