"""What a recipe step asks of a cluster: nodes, ranks per node, CPUs, memory, time.

A step that names ``gpus_per_node`` (one rank per GPU) or ``tasks_per_node`` (CPU ranks) runs
its ranks together: under torchrun on this machine (every rank of every node here), with
``srun`` through ``examples/slurm/launch.sh`` on Slurm. Any other step is one process on a CPU
node. The recipe's ``resources`` gives defaults for both kinds (``ranked`` and ``cpu``: nodes,
CPUs per task, memory, time); the ranks per node are always the step's own.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from motif_megatron.errors import UserError

KINDS = ("ranked", "cpu")


@dataclass(frozen=True)
class Resources:
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 0
    cpus_per_task: int | None = None
    mem: str | None = None
    time: str | None = None

    @property
    def ranks_per_node(self) -> int:
        return self.gpus_per_node or self.tasks_per_node

    @property
    def ranks(self) -> int:
        """Processes of the step (0: a plain process)."""
        return self.nodes * self.ranks_per_node

    def sbatch(self) -> dict[str, object]:
        """The ``#SBATCH`` options (without leading dashes) that ask Slurm for this."""
        options: dict[str, object] = {"nodes": self.nodes}
        if self.ranks_per_node:
            options["ntasks-per-node"] = self.ranks_per_node
        else:
            options["ntasks"] = 1
        if self.gpus_per_node:
            options["gpus-per-node"] = self.gpus_per_node
        for name in ("cpus_per_task", "mem", "time"):
            if getattr(self, name) is not None:
                options[name.replace("_", "-")] = getattr(self, name)
        return options


NAMES = {f.name for f in fields(Resources)}


def step_resources(step: dict, defaults: dict[str, dict], where: str) -> Resources:
    """A step's resources: its own fields over the recipe's defaults for its kind."""
    if step.get("gpus_per_node") and step.get("tasks_per_node"):
        raise UserError(f"{where}: gpus_per_node or tasks_per_node, not both")
    kind = "ranked" if step.get("gpus_per_node") or step.get("tasks_per_node") else "cpu"
    own = {k: step[k] for k in NAMES if k in step}
    return Resources(**(defaults.get(kind, {}) | own))


def defaults(raw: object, where: str) -> dict[str, dict]:
    """The recipe's ``resources: {ranked: {...}, cpu: {...}}`` (nodes, CPUs, memory, time)."""
    raw = raw or {}
    if not isinstance(raw, dict) or set(raw) - set(KINDS):
        raise UserError(f"{where}: resources has {sorted(KINDS)}, each a mapping")
    allowed = NAMES - {"gpus_per_node", "tasks_per_node"}
    for kind, values in raw.items():
        unknown = set(values or {}) - allowed
        if unknown:
            raise UserError(
                f"{where}: resources.{kind} takes {sorted(allowed)}, not {sorted(unknown)}"
            )
    return {kind: dict(values or {}) for kind, values in raw.items()}
