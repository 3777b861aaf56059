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


FS_SCRIPT = """\
set -e
truncate -s 64M meta data
meta=$(losetup -f --show meta)
data=$(losetup -f --show data)
pool=regress-$$-pool thin=regress-$$-thin
dmsetup create $pool --table "0 131072 thin-pool $meta $data 128 0 1 skip_block_zeroing"
dmsetup message $pool 0 create_thin 1
dmsetup create $thin --table "0 65536 thin /dev/mapper/$pool 1"
mkfs.ext4 -q -E nodiscard /dev/mapper/$thin
mkdir mnt
mount /dev/mapper/$thin mnt
yes x | head -c 1M > mnt/file
umount mnt
e2fsck -fn /dev/mapper/$thin >/dev/null 2>&1 && echo clean
mount -o ro /dev/mapper/$thin mnt
sort -u mnt/file; wc -c < mnt/file
umount mnt
python3 -c 'import sys; f = open(sys.argv[1], "rb"); f.seek(1080); print(f.read(2).hex())' \\
    /dev/mapper/$thin
dmsetup status $pool | cut -d' ' -f6
dmsetup remove $thin
dmsetup remove $pool
losetup -d $meta $data
"""


def test_real_software_makes_mounts_and_checks_an_ext4_file_system_on_a_thin(thinsim_host):
    # The script's /dev/mapper/... are real block devices on both backends (the model's
    # where FUSE and loop devices are: skipped with the reason elsewhere), so mkfs.ext4,
    # mount, e2fsck and Python's open() work on them as on a real host.
    thinsim_host.require_block_devices()
    result = thinsim_host.run(FS_SCRIPT)
    assert (result.stderr, result.returncode) == ("", 0)
    *read, used = result.stdout.split()
    # e2fsck finds it clean, the file reads back, the superblock has ext4's magic (0xef53)
    assert read == ["clean", "x", "1048576", "53ef"]
    assert 16 < int(used.split("/")[0]) < 1024  # the pool provisioned what ext4 wrote
