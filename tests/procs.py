"""The machine's processes as /proc lists them, for tests of what a killed job leaves behind."""

from __future__ import annotations

from pathlib import Path


def process_table() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) of every process readable now."""
    procs = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat, cmd = (d / "stat").read_text(), (d / "cmdline").read_bytes()
            except OSError:
                continue  # ended meanwhile
            procs[int(d.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
    return procs


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
