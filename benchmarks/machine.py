"""What every benchmark records about the machine and the code it measured: CPU, memory, thread
count, versions, the lemon commit (and whether lemon/ or csrc/ had uncommitted changes), hashes
of lemon's Python and C++ sources, and what lemon's C++ extension was built with."""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _first_line(path: str, prefix: str) -> str | None:
    try:
        with open(path) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(prefix)), None)
    except OSError:
        return None


def _sources_sha256(folder: str, pattern: str) -> str | None:
    root = REPO / folder
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for f in sorted(p for p in root.rglob(pattern) if p.is_file()):
        digest.update(f.relative_to(REPO).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def machine_info() -> dict:
    import torch
    import transformers

    import lemon.native

    memory = _first_line("/proc/meminfo", "MemTotal")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "lemon", "csrc"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = None, None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _first_line("/proc/cpuinfo", "model name"),
        "mem_total_bytes": int(memory.split()[0]) * 1024 if memory else None,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "machine": platform.machine(),
        "lemon_commit": commit, "lemon_dirty": dirty,
        "lemon_sources_sha256": _sources_sha256("lemon", "*.py"),
        "native_sources_sha256": _sources_sha256("csrc", "*"),
        "native_built": lemon.native.built(), "native_build_info": lemon.native.build_info(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
