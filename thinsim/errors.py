"""One root error class; each subclass carries the errno the kernel returns for it."""

from __future__ import annotations

import errno as _errno
import os


class ThinsimError(Exception):
    """Root of every error thinsim raises.  ``errno`` is what the kernel returns for it."""

    errno: int = _errno.EIO
    #: the kernel's log lines for the failure (``device-mapper: ...``), where it printed any
    kernel_log: tuple[str, ...] = ()

    def __init__(self, message: str = "", *, errno: int | None = None) -> None:
        if errno is not None:
            self.errno = errno
        super().__init__(message or os.strerror(self.errno))

    @property
    def errno_name(self) -> str:
        return _errno.errorcode.get(self.errno, str(self.errno))

    @property
    def strerror(self) -> str:
        return os.strerror(self.errno)


class ExistsError(ThinsimError):
    errno = _errno.EEXIST


class NoDataError(ThinsimError):
    errno = _errno.ENODATA


class BusyError(ThinsimError):
    errno = _errno.EBUSY


class InvalidArgumentError(ThinsimError):
    errno = _errno.EINVAL


class NoSpaceError(ThinsimError):
    errno = _errno.ENOSPC


class NotSupportedError(ThinsimError):
    errno = _errno.EOPNOTSUPP


class DeviceIOError(ThinsimError):
    errno = _errno.EIO


class PermissionDeniedError(ThinsimError):
    errno = _errno.EPERM


class NoDeviceError(ThinsimError):
    errno = _errno.ENXIO


class NotFoundError(ThinsimError):
    errno = _errno.ENOENT


_BY_ERRNO = {
    cls.errno: cls
    for cls in (
        ExistsError,
        NoDataError,
        BusyError,
        InvalidArgumentError,
        NoSpaceError,
        NotSupportedError,
        DeviceIOError,
        PermissionDeniedError,
        NoDeviceError,
        NotFoundError,
    )
}


def error_for(errno: int, message: str = "") -> ThinsimError:
    """The thinsim error class for a kernel errno (the root class for an unlisted one)."""
    cls = _BY_ERRNO.get(errno)
    if cls is None:
        return ThinsimError(message, errno=errno)
    return cls(message)


def with_kernel_log(error: ThinsimError, lines: list[str]) -> ThinsimError:
    """``error`` with the kernel's reason: the ``device-mapper:`` log lines printed while the
    call failed, kept in ``error.kernel_log`` and added to its message ("Invalid argument:
    device-mapper: thin: 254:0: pool target (512 blocks) too small: expected 1024")."""
    lines = [line for line in lines if line.startswith("device-mapper:")]
    error.kernel_log = tuple(lines)
    if lines and error.args:
        error.args = (f"{error.args[0]}: " + "; ".join(lines), *error.args[1:])
    return error
