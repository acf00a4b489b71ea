"""The node's open-file limit (RLIMIT_NOFILE), raised at start.

Every MQTT/TLS and HTTP connection holds one file descriptor (the DTLS sessions of a
node share its UDP socket), so the soft limit caps the connections a node can hold:
distributions start services at 1,024 soft, which is 1,000 devices. Raising the soft
limit up to the hard limit needs no privilege; raising the hard limit needs
CAP_SYS_RESOURCE (root outside a restricted container), so operators set it where the
process starts (ulimit -n, systemd ``LimitNOFILE=``, ``docker run --ulimit``, the
container runtime's default for Kubernetes): see docs/operations.md.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

#: What Linux accepts at most for RLIMIT_NOFILE when the hard limit is "unlimited".
_NR_OPEN = Path("/proc/sys/fs/nr_open")
_NR_OPEN_DEFAULT = 1_048_576


@dataclass(frozen=True)
class OpenFilesLimit:
    """The limit before and after ``raise_open_files``."""

    soft_before: int
    hard_before: int
    soft: int
    hard: int
    #: What was asked for (0: the hard limit).
    wanted: int
    #: Why the hard limit could not be raised to ``wanted`` (None: it was, or not asked).
    refused: str | None = None

    @property
    def short(self) -> bool:
        """Less than was asked for."""
        return self.wanted > self.soft


def _ceiling(hard: int) -> int:
    """The highest soft limit the kernel takes under ``hard``."""
    if hard != resource.RLIM_INFINITY:
        return hard
    try:
        return int(_NR_OPEN.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _NR_OPEN_DEFAULT


def raise_open_files(wanted: int = 0) -> OpenFilesLimit:
    """Raise the soft limit to the hard limit, or to ``wanted`` when that is higher and the
    process may raise its hard limit (CAP_SYS_RESOURCE); never lowers either limit."""
    soft0, hard0 = resource.getrlimit(resource.RLIMIT_NOFILE)
    refused: str | None = None
    if wanted > _ceiling(hard0):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        except (ValueError, OSError) as exc:
            refused = f"the hard limit stays {hard0}: {exc} (needs CAP_SYS_RESOURCE)"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _ceiling(hard) if not wanted else min(wanted, _ceiling(hard))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return OpenFilesLimit(soft0, hard0, soft, hard, wanted, refused)
