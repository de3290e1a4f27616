"""A recipe file: settings, steps (the project's commands with ``{placeholders}``), arms, targets.

  name: demo
  settings: {base: hf/tiny, lr: 3.0e-4, train_from: "{grow}"}
  steps:
    - {name: import, run: "tools/convert_hf.py import --hf-dir {base} --out {out}", inputs: ["{base}"]}
    - {name: grow, run: "tools/expand_checkpoint.py --load {import} --save {out} --depth-add 2"}
    - {name: train, run: "pretrain_motif.py --load {train_from} --save {out} --lr {lr}",
       tasks_per_node: 2}
  targets: [train]
  arms: {baseline: {train_from: "{import}"}, low_lr: {lr: 1.0e-4}, main: {targets: [train, export]}}
  sweep: {setting: lr, values: [1.0e-4, 3.0e-4], select: train}
  seeds: {setting: seed, values: ["1", "2", "3"], arms: [baseline, main]}

A step's ``nodes``, ``gpus_per_node`` or ``tasks_per_node``, ``cpus_per_task``, ``mem`` and
``time`` say what it runs on, over the recipe's ``resources`` defaults (:mod:`resources`). A step
with ranks and ``layout: PLAN`` takes its nodes, ranks per node and parallel layout from the
``launch`` of ``PLAN``'s ``{out}/plan.json`` (``tools/plan.py --json``; a ``dry_run`` step, so
it is known before anything is submitted), and may not name those flags itself.
In a command, ``{out}`` is the step's own folder, ``{NAME}`` of a step is that step's folder (a
dependency), and any other name is a setting; settings are templates too, so an arm can reroute
a step's input. Each arm runs the steps its targets reach (an arm's own ``targets`` replace the
recipe's). A ``sweep`` runs every arm up to its ``select`` step once per value of one setting and
keeps, per arm, the value whose ``select`` step ended with the lowest ``metric`` (default
``eval_loss``, the last one in the step's ``metrics.jsonl``). ``seeds`` reruns ``arms`` (all by
default) up to the report's step once per other value of one setting, at the kept sweep value:
the report gives each figure's mean and spread over them (the first value is the arm's own run). A step is identified by a hash of its
command with every dependency replaced by that dependency's hash, its number of ranks, the
contents of its ``inputs`` and of every ``--config`` file its command names, and the project's
code version: arms that agree on a step share it, and a step whose hash has a finished folder is
not run again.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from motif_megatron.errors import UserError
from motif_megatron.recipe import resources
from motif_megatron.recipe.resources import Resources

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAIN_ARM = "main"


@dataclass(frozen=True)
class Step:
    name: str
    run: str
    resources: Resources = field(default_factory=Resources)
    """Nodes, ranks per node (0: a plain process), CPUs, memory, time (:mod:`resources`)."""
    inputs: tuple[str, ...] = ()
    """Files or folders whose contents are part of the step's identity."""
    dry_run: bool = False
    """Runs in ``--dry-run`` too (a cheap preview such as ``tools/plan.py``), and here before a
    ``--slurm`` submission; it reads only other ``dry_run`` steps."""
    layout: str | None = None
    """The plan step whose recommended layout this step runs at."""


@dataclass(frozen=True)
class Planned:
    step: Step
    command: str
    """The command template with settings substituted (``{out}`` and step names remain)."""
    inputs: list[str]
    deps: list[str]


@dataclass
class Recipe:
    name: str
    steps: dict[str, Step]
    settings: dict[str, object] = field(default_factory=dict)
    arms: dict[str, dict[str, object]] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    slurm: dict[str, object] = field(default_factory=dict)
    """``#SBATCH`` options of every step script (``partition``, ``time``, ...)."""
    report: dict[str, str] = field(default_factory=dict)
    """The ablation report's source: ``step`` (an evaluation step), ``checkpoint`` (its label),
    ``korean`` / ``english`` (its languages), ``baseline`` and ``recipe`` (arms), ``base`` (the
    label of the untrained model) and ``train`` (the step whose metrics count tokens)."""
    sweep: dict[str, object] = field(default_factory=dict)
    seeds: dict[str, object] = field(default_factory=dict)
    """``setting``, ``values`` (the first the headline run's) and ``arms`` to repeat."""
    arm_targets: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, overrides: dict[str, str] | None = None) -> Recipe:
        """The recipe at ``path``, with ``overrides`` replacing some of its settings."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"recipe {path} not found")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list):
            raise UserError(f"{path}: a recipe needs a 'steps' list")
        steps, defaults = {}, resources.defaults(raw.get("resources"), str(path))
        for entry in raw["steps"]:
            unknown = set(entry) - {"name", "run", "inputs", "dry_run", "layout"} - resources.NAMES
            if unknown or "name" not in entry or "run" not in entry:
                raise UserError(
                    f"{path}: step {entry.get('name', '?')}: needs name and run, got {sorted(unknown)}"
                )
            if entry["name"] in steps:
                raise UserError(f"{path}: two steps are named {entry['name']!r}")
            where = f"{path}: step {entry['name']}"
            steps[entry["name"]] = Step(
                entry["name"],
                entry["run"],
                resources.step_resources(entry, defaults, where),
                tuple(entry.get("inputs", ())),
                bool(entry.get("dry_run", False)),
                entry.get("layout"),
            )
        arms = {k: dict(v or {}) for k, v in (raw.get("arms") or {}).items()}
        settings = dict(raw.get("settings") or {})
        _check_overrides(overrides or {}, settings, arms, dict(raw.get("sweep") or {}), path)
        recipe = cls(
            raw.get("name", path.stem),
            steps,
            settings | (overrides or {}),
            arms,
            list(raw.get("targets") or ([next(reversed(steps))] if steps else [])),
            dict(raw.get("slurm") or {}),
            dict(raw.get("report") or {}),
            dict(raw.get("sweep") or {}),
            dict(raw.get("seeds") or {}),
            {k: list(v.pop("targets")) for k, v in arms.items() if "targets" in v},
        )
        step = recipe.report.get("step")
        for targets in (recipe.targets, *recipe.arm_targets.values()):
            if step and step not in targets:
                targets.append(step)  # every arm evaluates
        recipe.check()
        return recipe

    def check(self) -> None:
        for target in (*self.targets, *(t for ts in self.arm_targets.values() for t in ts)):
            if target not in self.steps:
                raise UserError(f"target {target!r} is not a step")
        self._check_sweep()
        self._check_seeds()
        for arm, overrides in self.arms.items():
            unknown = set(overrides) - set(self.settings)
            if unknown:
                raise UserError(f"arm {arm!r} sets {sorted(unknown)}, which are not settings")
        from motif_megatron.recipe.ablation import REPORT_KEYS

        if self.report and (
            set(self.report) - REPORT_KEYS or self.report.get("step") not in self.steps
        ):
            raise UserError(f"report: needs step (a step) and only {sorted(REPORT_KEYS)}")
        if self.report.get("baseline") not in (None, *self.arms):
            raise UserError(f"report: baseline {self.report['baseline']!r} is not an arm")
        for step in self.steps.values():
            _check_layout(step, self.steps)
            _check_stops(step)
        for arm in self.arm_names():
            # unknown names and cycles fail here, before anything runs
            for planned in self.plan(arm):
                late = [d for d in planned.deps if not self.steps[d].dry_run]
                if planned.step.dry_run and late:
                    raise UserError(
                        f"step {planned.step.name} runs in --dry-run and before a --slurm "
                        f"submission, so it cannot read {late[0]}, which is not a dry_run step"
                    )

    def _check_sweep(self) -> None:
        if not self.sweep:
            return
        unknown = set(self.sweep) - {"setting", "values", "select", "metric"}
        setting, values = self.sweep.get("setting"), self.sweep.get("values")
        if unknown or setting not in self.settings or not isinstance(values, list) or not values:
            raise UserError(
                "sweep: needs setting (a setting), values (a list), select (a step) "
                f"and optionally metric; got {sorted(self.sweep)}"
            )
        if self.sweep.get("select") not in self.steps:
            raise UserError(f"sweep: select {self.sweep.get('select')!r} is not a step")

    def _check_seeds(self) -> None:
        if not self.seeds:
            return
        setting, values = self.seeds.get("setting"), self.seeds.get("values")
        arms = self.seeds.get("arms", self.arm_names())
        if (
            set(self.seeds) - {"setting", "values", "arms", "settings"}
            or setting not in self.settings
            or not isinstance(self.seeds.get("settings", {}), dict)
            or not set(self.seeds.get("settings", {})) <= set(self.settings) - {setting}
            or not isinstance(values, list)
            or len(values) < 2
            or str(values[0]) != str(self.settings[setting])
            or not set(arms) <= set(self.arm_names())
        ):
            raise UserError(
                "seeds: needs setting (a setting), values (a list of at least 2, the first the "
                "setting's own value) and optionally arms (arms) and settings (other settings' "
                f"values in the repeats); got {self.seeds}"
            )
        if not self.report.get("step"):
            raise UserError("seeds: the repeats run up to the report's step; give report.step")

    def seed_arms(self) -> list[str]:
        return list(self.seeds.get("arms", self.arm_names())) if self.seeds else []

    def arm_names(self) -> list[str]:
        return list(self.arms) or [MAIN_ARM]

    def settings_of(self, arm: str, overrides: dict | None = None) -> dict[str, object]:
        return {**self.settings, **self.arms.get(arm, {}), **(overrides or {})}

    def expand(self, template: str, settings: dict, seen: tuple[str, ...] = ()) -> str:
        """``template`` with settings substituted (recursively); step names and ``out`` stay."""

        def one(match: re.Match) -> str:
            name = match.group(1)
            if name == "out" or name in self.steps:
                return match.group(0)
            if name not in settings:
                raise UserError(f"{{{name}}} is neither a setting nor a step (in {template!r})")
            if name in seen:
                raise UserError(f"setting {name!r} refers to itself")
            return self.expand(str(settings[name]), settings, (*seen, name))

        return _FIELD.sub(one, template)

    def plan(
        self, arm: str, overrides: dict | None = None, targets: list[str] | None = None
    ) -> list[Planned]:
        """The arm's steps in run order, settings (with ``overrides``) substituted, up to
        ``targets`` (default: the arm's)."""
        settings, order, state = self.settings_of(arm, overrides), [], {}
        expanded = {
            name: self.expand(s.run + " " + " ".join(s.inputs), settings)
            for name, s in self.steps.items()
        }

        def visit(name: str, path: tuple[str, ...]) -> None:
            if state.get(name) == "done":
                return
            if name in path:
                raise UserError(
                    f"steps depend on each other in a cycle: {' -> '.join((*path, name))}"
                )
            named = [*_FIELD.findall(expanded[name]), *filter(None, [self.steps[name].layout])]
            deps = [d for d in dict.fromkeys(named) if d in self.steps]
            for dep in deps:
                visit(dep, (*path, name))
            state[name] = "done"
            step = self.steps[name]
            inputs = [self.expand(i, settings) for i in step.inputs]
            if any(d in self.steps for i in inputs for d in _FIELD.findall(i)):
                raise UserError(f"step {name}: inputs are files; a step's folder is a dependency")
            command = self.expand(step.run, settings)
            first = (shlex.split(command) or [""])[0]
            if step.resources.ranks and not first.endswith(".py"):
                raise UserError(f"step {name}: a step with ranks runs a .py script, not {first!r}")
            inputs += [c for c in _config_files(command) if c not in inputs]
            order.append(Planned(step, command, inputs, deps))

        for target in targets or self.arm_targets.get(arm, self.targets):
            visit(target, ())
        return order


LAYOUT_FLAGS = (
    "--tensor-model-parallel-size",
    "--pipeline-model-parallel-size",
    "--num-layers-per-virtual-pipeline-stage",
    "--context-parallel-size",
    "--sequence-parallel",
    "--use-distributed-optimizer",
    "--recompute-granularity",
    "--micro-batch-size",
)
"""What a plan's ``launch`` sets (:func:`motif_megatron.plan.layouts.launch`)."""


def _check_layout(step: Step, steps: dict[str, Step]) -> None:
    if step.layout is None:
        return
    source = steps.get(step.layout)
    if source is None or not source.dry_run:
        raise UserError(
            f"step {step.name}: layout {step.layout!r} must be a dry_run step writing "
            "{out}/plan.json (tools/plan.py --json)"
        )
    if not step.resources.ranks:
        raise UserError(f"step {step.name}: a layout is for a step with ranks (gpus_per_node)")
    named = [f for f in LAYOUT_FLAGS if f in shlex.split(step.run)]
    if named:
        raise UserError(
            f"step {step.name}: its layout comes from {step.layout}; drop {', '.join(named)}"
        )


TRAINERS = ("pretrain_motif.py", "posttrain_motif.py")


def _check_stops(step: Step) -> None:
    """A training step with ranks takes Slurm's warning before its time limit (SIGUSR1) as a
    stop: it saves and is requeued, where without the handler the signal would kill it."""
    words = shlex.split(step.run)
    trains = bool(words) and Path(words[0]).name in TRAINERS
    if trains and step.resources.ranks and "--exit-signal-handler" not in words:
        raise UserError(
            f"step {step.name}: a training step with ranks needs --exit-signal-handler (on "
            "Slurm, SIGUSR1 before its time limit then saves and requeues it instead of "
            "killing it)"
        )


def _check_overrides(
    overrides: dict, settings: dict, arms: dict[str, dict], sweep: dict, path: Path
) -> None:
    """``--set`` names a setting that no arm or sweep replaces (it would be dropped there)."""
    for name in overrides:
        if name not in settings:
            raise UserError(f"--set {name}: not a setting of {path.name}")
        owners = [arm for arm, values in arms.items() if name in values]
        if owners:
            raise UserError(
                f"--set {name}: arm {owners[0]} sets {name} itself, which --set cannot replace; "
                f"change it in {path.name}"
            )
        if sweep.get("setting") == name:
            raise UserError(f"--set {name}: the sweep tries its own values of {name}")


def _config_files(command: str) -> list[str]:
    """The files a command's ``--config`` flags name (a step's folder is a dependency instead;
    a file not there yet, as in a dry run before the data exists, is the command's to report)."""
    words = shlex.split(command)
    named = [b for a, b in itertools.pairwise(words) if a == "--config"]
    named += [w.split("=", 1)[1] for w in words if w.startswith("--config=")]
    return [c for c in named if not _FIELD.search(c) and Path(c).is_file()]


def fingerprint(path: Path) -> str:
    """Contents of a file, or of every file under a folder (names and bytes)."""
    if not path.exists():
        raise UserError(f"input {path} does not exist")
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def render(template: str, folders: dict[str, str], out: str) -> list[str]:
    """The command: step names to their folders, ``{out}`` to this step's folder, split."""
    text = _FIELD.sub(lambda m: out if m.group(1) == "out" else folders[m.group(1)], template)
    return shlex.split(text)
