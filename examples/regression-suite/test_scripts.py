"""Shell scripts on a host: the simulated one on the model, the real tools on the kernel.

The scripts name their devices by what losetup hands out, so that they hold on a host that
has loop devices of its own; the dm names carry the shell's PID, so that they meet none of
the host's.
"""

POOL_SCRIPT = """\
set -e
truncate -s 64M meta data
meta=$(losetup -f --show meta)
data=$(losetup -f --show data)
pool=regress-$$-pool
dmsetup create $pool --table "0 131072 thin-pool $meta $data 128 0"
dmsetup message $pool 0 create_thin 1
dmsetup create regress-$$-thin --table "0 8192 thin /dev/mapper/$pool 1"
dd if=/dev/zero of=/dev/mapper/regress-$$-thin bs=64k count=3 oflag=direct status=none
dmsetup status regress-$$-thin | cut -d' ' -f4-
dmsetup status $pool | cut -d' ' -f4-8
dmsetup remove regress-$$-thin
dmsetup remove $pool
losetup -d $meta $data
"""


def test_a_script_builds_a_pool_writes_three_blocks_and_reads_its_status(thinsim_host):
    result = thinsim_host.run(POOL_SCRIPT)
    assert (result.stdout, result.stderr, result.returncode) == (
        "384 383\n0 1649/16384 3/1024 - rw\n",
        "",
        0,
    )


def test_a_refused_message_fails_the_script_with_dmsetups_error(thinsim_host):
    script = POOL_SCRIPT.replace(
        "create_thin 1\n", "create_thin 1\ndmsetup message $pool 0 create_thin 1\n"
    )
    result = thinsim_host.run(script)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0].endswith("failed: File exists")
