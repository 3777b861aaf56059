# thin_metadata_size: units, numeric output, and invalid inputs.
run() { printf '$ %s\n' "$*"; printf '$ %s\n' "$*" >&2; "$@"; echo "rc=$?"; }

run thin_metadata_size -b 64k -s 100G -m 1000
run thin_metadata_size -b 64k -s 100G -m 1000 -u m
run thin_metadata_size -b 64k -s 100G -m 1000 -u M
run thin_metadata_size -b 64k -s 100G -m 1000 -u k
run thin_metadata_size -b 64k -s 100G -m 1000 -u s
run thin_metadata_size -b 64k -s 100G -m 1000 -u b
run thin_metadata_size -b 64k -s 100G -m 1000 -u g
run thin_metadata_size -b 64k -s 100G -m 1000 -u G
run thin_metadata_size -b 64k -s 100G -m 1000 -n
run thin_metadata_size -b 64k -s 100G -m 1000 -n -u k
run thin_metadata_size -b 128s -s 209715200s -m 1
run thin_metadata_size -b 64K -s 1T -m 10000 -u m
run thin_metadata_size -b 1m -s 16T -m 100 -u g -n
run thin_metadata_size -b 2g -s 1p -m 1 -u t
run thin_metadata_size -b 65536b -s 10737418240b -m 5 -u b -n
run thin_metadata_size --block-size=64k --pool-size=10g --max-thins=50 --unit=k
run thin_metadata_size --block-size 64k --pool-size 10g --max-thins 50 --numeric-only
run thin_metadata_size -b 64 -s 100 -m 1
run thin_metadata_size -b 64k -s 100G -m 1000 -u e
run thin_metadata_size -b 64k -s 100G -m 1000 -u x
run thin_metadata_size -b 32k -s 100G -m 1000
run thin_metadata_size -b 4g -s 100G -m 1000
run thin_metadata_size -b 96k -s 100G -m 1000
run thin_metadata_size -b 64k -s 1k -m 1
run thin_metadata_size -b 64k -s 100G -m 0
run thin_metadata_size -b 64k -s 100G
run thin_metadata_size -b 64k -m 10
run thin_metadata_size -s 1G -m 10
run thin_metadata_size -b junk -s 1G -m 10
run thin_metadata_size -b 64k -s 1G -m junk
run thin_metadata_size -b 64k -s -1G -m 10
run thin_metadata_size -b 64q -s 1G -m 10
run thin_metadata_size
run thin_metadata_size -h
run thin_metadata_size --version
run thin_metadata_size -V
run thin_metadata_size --bogus
