"""Running the real host tools (dmsetup, losetup, modprobe ...) and reading their errors.

Every command goes through :func:`run_command`: an argv list (never a shell), logged, run with
``LC_ALL=C`` so that the errno text at the end of a tool's message can be mapped back to the
errno the kernel returned.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from ..errors import ThinsimError, error_for

log = logging.getLogger("thinsim.kernel")

# strerror text -> errno, over every errno the platform knows ("File exists" -> EEXIST).
_ERRNO_BY_TEXT = {os.strerror(code): code for code in errno.errorcode}
# Messages libdevmapper prints instead of a strerror text (libdm-iface.c: ENXIO from the ioctl).
_ERRNO_BY_TOOL_TEXT = {"Device does not exist.": errno.ENXIO}

# The tools print their errno texts in English only under the C locale.
_ENV = {**os.environ, "LC_ALL": "C"}


def errno_from_message(text: str) -> int | None:
    """The errno whose strerror text ends a line of ``text`` after ``": "``, if any.

    Tools print e.g. ``device-mapper: message ioctl on pool  failed: File exists`` or
    ``losetup: /dev/loop0: failed to set up loop device: Device or resource busy``.
    The longest matching text wins ("No such device or address" over "No such device").

    >>> errno_from_message("device-mapper: message ioctl on pool  failed: File exists\\n")
    17
    >>> errno_from_message("Device does not exist.\\nCommand failed.\\n")
    6
    """
    best: tuple[int, int] | None = None
    for line in text.splitlines():
        line = line.rstrip()
        if line in _ERRNO_BY_TOOL_TEXT:
            return _ERRNO_BY_TOOL_TEXT[line]
        for msg, code in _ERRNO_BY_TEXT.items():
            if line.endswith(": " + msg) and (best is None or len(msg) > best[0]):
                best = (len(msg), code)
    return None if best is None else best[1]


class CommandError(RuntimeError):
    """A tool failed without a recognisable errno: a harness problem, not a kernel result.

    Deliberately not a :class:`ThinsimError`, so that it can never pass for a kernel error
    in a comparison with the model."""


def run_command(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (never through a shell), log it, and map a failure to a ThinsimError.

    A failing command whose stderr names an errno raises ``error_for(errno)`` carrying the
    tool's message; any other failure raises :class:`CommandError`.  With ``check=False``
    the result is returned as is.
    """
    log.debug("run: %s", shlex.join(argv))
    try:
        proc = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env=_ENV,
        )
    except FileNotFoundError:
        raise CommandError(f"{argv[0]}: command not found") from None
    if proc.returncode != 0:
        log.debug("exit %d: %s", proc.returncode, proc.stderr.strip())
    if check and proc.returncode != 0:
        raise error_of(argv, proc)
    return proc


def error_of(argv: list[str], proc: subprocess.CompletedProcess[str]) -> Exception:
    """The exception a failed command stands for (see :func:`run_command`)."""
    code = errno_from_message(proc.stderr)
    if code is None:
        return CommandError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr}")
    return error_for(code, proc.stderr.strip())


def dmsetup(*args: str) -> list[str]:
    """``dmsetup ARGS``: its output lines, exactly as printed (trailing spaces kept)."""
    return run_command(["dmsetup", *args]).stdout.splitlines()


# -- is a real dm-thin kernel here? --------------------------------------------------------

VM_HINT = (
    "A kernel with dm-thin is available in a VM: `thinsim vm -- COMMAND` boots Debian's kernel "
    "and runs COMMAND in it as root (it needs qemu-system-x86, linux-image-amd64 and "
    "virtme-ng; as root, `make system-deps` installs them)."
)


class KernelUnavailableError(ThinsimError):
    """This host cannot run the kernel backend; the message says why and what to do."""

    errno = errno.ENODEV


def _misc_devices() -> str:
    try:
        return Path("/proc/misc").read_text()
    except OSError:
        return ""


def unavailable_reason() -> str | None:
    """Why the kernel backend cannot run here (one sentence and the VM hint), or None.

    Checks in order: root, the tools, device-mapper in the kernel, the dm-thin-pool module,
    loop devices.  It runs no command and loads no module: asking a host whose kernel lacks
    them must change nothing on it.
    """
    if os.geteuid() != 0:
        return (
            f"the kernel backend needs root (this process runs as uid {os.geteuid()}): "
            f"it creates loop and device-mapper devices. {VM_HINT}"
        )
    for tool, package in (("dmsetup", "dmsetup"), ("losetup", "mount")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})."
    release = os.uname().release
    if not re.search(r"^\s*\d+ device-mapper$", _misc_devices(), re.MULTILINE):
        return (
            f"this kernel ({release}) has no device-mapper (no device-mapper in /proc/misc; "
            f"`modprobe dm-mod` loads it where the kernel has it as a module). {VM_HINT}"
        )
    if not Path("/sys/module/dm_thin_pool").is_dir():
        return (
            f"this kernel ({release}) has device-mapper but dm-thin is not loaded "
            f"(no /sys/module/dm_thin_pool; `modprobe dm-thin-pool` loads it where the kernel "
            f"has it as a module). {VM_HINT}"
        )
    if not Path("/dev/loop-control").exists():
        return (
            f"this kernel ({release}) has no loop devices (no /dev/loop-control; "
            f"`modprobe loop`). {VM_HINT}"
        )
    return None


def require_kernel() -> None:
    """Raise :class:`KernelUnavailableError` unless the kernel backend can run here."""
    reason = unavailable_reason()
    if reason is not None:
        raise KernelUnavailableError(reason)
