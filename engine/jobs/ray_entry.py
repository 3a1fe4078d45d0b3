"""The Ray job's entrypoint on the node Ray chose: check that this node sees the run folder the
worker prepared (read the token it wrote, write a file), say where the job runs, then become the
training program (``exec``: same process, so Ray's stop signal reaches it).

    python -m engine.jobs.ray_entry TOKEN MODULE RUN_DIR [--resume]

Events on stdout as the program writes them: a ``log`` line naming the node, or one ``error`` and
exit code 1 when the run folder is not shared storage.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

TOKEN_FILE = ".ray-submit"


def where() -> dict[str, str]:
    """This node as Ray and the OS name it."""
    return {
        "hostname": socket.gethostname(),
        "ray_node_id": os.environ.get("RAY_NODE_ID", ""),
        "node_label": os.environ.get("THREADTUNE_NODE_LABEL", ""),
    }


def check_run_dir(run_dir: Path, token: str) -> str | None:
    """None when this node reads the worker's token in ``run_dir`` and can write there."""
    try:
        seen = (run_dir / TOKEN_FILE).read_text().strip()
    except OSError:
        seen = ""
    if seen != token:
        return (
            f"The Ray node {socket.gethostname()} does not see the run folder {run_dir} that the "
            "worker prepared: threadtune's Ray runner needs the run folder on storage shared by "
            "the worker and every node, at the same path (THREADTUNE_HOME on NFS or similar)."
        )
    probe = run_dir / f".ray-write-probe-{os.getpid()}"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return (
            f"The Ray node {socket.gethostname()} sees the run folder {run_dir} but cannot write "
            f"into it ({exc.strerror}); make it writable by the user Ray runs as."
        )
    return None


def _emit(event: dict[str, str]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    token, module, run_dir = argv[0], argv[1], Path(argv[2])
    problem = check_run_dir(run_dir, token)
    if problem:
        _emit({"event": "error", "message": problem})
        return 1
    # stderr into the run folder (appended across attempts), so the job's log carries only events
    err = os.open(run_dir / "stderr.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(err, 2)
    os.close(err)
    node = where()
    (run_dir / "node.json").write_text(json.dumps(node))
    _emit({"event": "log", "message": f"running on Ray node {node}", **node})
    os.execv(sys.executable, [sys.executable, "-m", module, *argv[2:]])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
