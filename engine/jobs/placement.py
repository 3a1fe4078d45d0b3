"""What a training job asks a Ray cluster for, and whether any node of the cluster can ever give it.

A job asks for GPUs (its config's ``gpus=N``, else ``RAY_JOB_GPUS``: the program trains on all
the GPUs Ray gives it, engine/train/distributed.py), CPUs, host memory and optional custom
resources (``RAY_JOB_*`` settings); Ray then starts the program only on a node that has them.
Without any request Ray would run it on the head node, which usually has no GPU. Memory comes
from the preflight estimate (engine/train/preflight.py): host memory on a CPU node; on a GPU node
the program's own preflight checks the GPU's memory (Ray does not track GPU memory), so the job
asks for no host memory there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 2**30


class PlacementError(RuntimeError):
    """No node of the cluster can ever run the job; the message says what is missing."""


@dataclass(frozen=True)
class Requirements:
    gpus: float = 0
    cpus: float = 1
    memory: int = 0  # bytes of host memory, 0 = not asked
    resources: dict[str, float] = field(default_factory=dict)  # custom resources and labels

    def submit_kwargs(self) -> dict[str, Any]:
        """The ``JobSubmissionClient.submit_job`` arguments."""
        return {
            "entrypoint_num_gpus": self.gpus,
            "entrypoint_num_cpus": self.cpus,
            "entrypoint_memory": self.memory or None,
            "entrypoint_resources": dict(self.resources) or None,
        }

    def describe(self) -> str:
        parts = [f"{self.gpus:g} GPU" + ("s" if self.gpus != 1 else "")] if self.gpus else []
        parts.append(f"{self.cpus:g} CPU" + ("s" if self.cpus != 1 else ""))
        if self.memory:
            parts.append(f"{self.memory / GIB:.1f} GiB of memory")
        parts += [f"{amount:g} {name}" for name, amount in sorted(self.resources.items())]
        return ", ".join(parts)

    def as_resources(self) -> dict[str, float]:
        """In Ray's resource names (``memory`` in bytes)."""
        needed = {"CPU": self.cpus, "GPU": self.gpus, "memory": float(self.memory)}
        needed.update(self.resources)
        return {name: amount for name, amount in needed.items() if amount > 0}


@dataclass(frozen=True)
class PlacementSettings:
    """From ``RAY_JOB_GPUS``, ``RAY_JOB_CPUS``, ``RAY_ACCELERATOR_TYPE``, ``RAY_JOB_RESOURCES``."""

    gpus: float | None = None  # None: 1 when any node of the cluster has a GPU, else 0
    cpus: float = 1
    accelerator_type: str = ""  # e.g. "A100": Ray's accelerator_type:A100 resource
    resources: dict[str, float] = field(default_factory=dict)


def requirements_for(
    run_dir: Path, settings: PlacementSettings, nodes: list[dict[str, float]]
) -> Requirements:
    """What the job in ``run_dir`` (its ``config.json``) asks for on this cluster."""
    from engine.train.config import TrainConfig
    from engine.train.preflight import estimate_for_device

    try:
        config = TrainConfig.from_dict(json.loads((Path(run_dir) / "config.json").read_text()))
    except (OSError, ValueError):  # not a training config (a test's stand-in program)
        config = None
    gpus = settings.gpus
    if config is not None and config.gpus:
        gpus = float(config.gpus)  # the job's gpus=N: that many on one node (data-parallel)
    if gpus is None:
        gpus = 1.0 if any(node.get("GPU", 0) >= 1 for node in nodes) else 0.0
    resources = dict(settings.resources)
    if settings.accelerator_type:
        resources[f"accelerator_type:{settings.accelerator_type}"] = 0.001
    memory = 0
    if not gpus:
        memory = (estimate_for_device(config, gpu=False) or 0) if config else 0
    return Requirements(gpus=gpus, cpus=settings.cpus, memory=memory, resources=resources)


def refusal(needed: Requirements, nodes: list[dict[str, float]]) -> str | None:
    """A sentence when no node's *total* resources cover ``needed`` (the job would wait forever),
    else None. Busy nodes are fine: the job waits for them."""
    want = needed.as_resources()
    if any(all(node.get(k, 0.0) >= v for k, v in want.items()) for node in nodes):
        return None
    if not nodes:
        return "The Ray cluster has no live node, so the job cannot run; start one (`ray start`)."
    shown = "; ".join(_describe_node(node) for node in nodes[:4])
    return (
        f"No node of the Ray cluster can ever run this job: it asks for {needed.describe()}, and "
        f"the nodes have {shown}. Add a node that has them, or lower RAY_JOB_GPUS, RAY_JOB_CPUS, "
        "RAY_JOB_RESOURCES or RAY_ACCELERATOR_TYPE (or the job's batch_size / max_length)."
    )


def _describe_node(node: dict[str, float]) -> str:
    parts = [f"{node.get('GPU', 0):g} GPU", f"{node.get('CPU', 0):g} CPU"]
    parts.append(f"{node.get('memory', 0) / GIB:.1f} GiB")
    standard = {"GPU", "CPU", "memory", "object_store_memory"}
    parts += [
        f"{amount:g} {name}"
        for name, amount in sorted(node.items())
        if name not in standard and not name.startswith("node:")
    ]
    return ", ".join(parts)


def cluster_nodes(address: str) -> list[dict[str, float]]:
    """Total resources of each live node, from Ray's state API at the dashboard ``address``."""
    from ray.util.state import list_nodes

    nodes = list_nodes(address=address, filters=[("state", "=", "ALIVE")], detail=True)
    return [dict(_field(node, "resources_total") or {}) for node in nodes]


def _field(node: Any, name: str) -> Any:
    return node.get(name) if isinstance(node, dict) else getattr(node, name, None)


__all__ = [
    "PlacementError",
    "PlacementSettings",
    "Requirements",
    "cluster_nodes",
    "refusal",
    "requirements_for",
]
