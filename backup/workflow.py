"""The declaration of a workflow, and the lookup of the registered ones.

Each workflow module in ``backup/`` ends with one ``DEFINITION = Workflow(...)``
that says everything the rest of the system needs to know about it:

* its phases in order, each with its function, its queue and whether it runs
  through Spark (``Resources.spark()``);
* the request: ``submit(res, <request arguments>, job_id=None)`` creates the
  job record and its signature *is* the enqueue contract (argument names,
  order and defaults; ``idempotency_key`` is added to every workflow);
  ``validate(res, <request arguments>)`` checks a request before it is
  enqueued;
* the cleanup run after a final failure (e.g. drop a remote temporary file);
* the plan: ``plan(res, <request arguments>)`` says what a run of that request
  would do (``backupctl plan``, ``backupctl run --plan``) and writes nothing: no
  job record, no Redis key, no file.  It calls the very functions the phases
  use for the window, the names, the paths and the discovery, so the plan and
  the run that follows cannot disagree;
* the ``backupctl run <name>`` options, each filling one request argument.

The Celery app (include list, routes), the tasks (``tasks.common.register_workflow``),
the CLI, the schedule check and the docs all read it; nothing else lists
workflows.  The registry itself (``config.workflows``) is plain data naming
the module; ``definition(name)`` imports it on first use.

Importing a workflow module reads no configuration and starts nothing.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from base.errors import ConfigError
from config.workflows import WORKFLOWS, entry_task_name

if TYPE_CHECKING:
    from backup.resources import Resources
    from backup.runner import PhaseContext

QUEUES = ("default", "io", "spark")
#: the request argument every entry task takes besides the workflow's own (backup/enqueue.py)
IDEMPOTENCY_KEY = "idempotency_key"


@dataclass(frozen=True)
class Phase:
    """One phase: a Celery task ``<workflow task>.<name>`` running ``run(ctx)`` on ``queue``.

    ``fan_out``: the phase runs as one task per item (customer-files' ``copy``);
    its task is written by the workflow's tasks module, not generated.
    """

    name: str
    run: Callable[["PhaseContext"], dict] | None
    queue: str = "default"
    spark: bool = False
    fan_out: bool = False

    def __post_init__(self):
        if self.queue not in QUEUES:
            raise ConfigError(f"phase {self.name}: unknown queue {self.queue!r} (known: {', '.join(QUEUES)})")
        if self.run is None and not self.fan_out:
            raise ConfigError(f"phase {self.name}: needs a function (only a fan-out phase brings its own task)")


@dataclass(frozen=True)
class Option:
    """A ``backupctl run <workflow>`` option filling the request argument ``dest``."""

    flag: str
    dest: str
    help: str
    type: Callable[[str], Any] | None = None
    flag_only: bool = False  # a switch (store_true)
    required: bool = False
    choices: tuple[str, ...] | None = None

    def add_to(self, parser) -> None:
        """Add this option to an argparse parser."""
        if self.flag_only:
            parser.add_argument(self.flag, dest=self.dest, action="store_true", help=self.help)
        else:
            parser.add_argument(self.flag, dest=self.dest, type=self.type, help=self.help, required=self.required,
                                choices=self.choices)


@dataclass(frozen=True)
class Workflow:
    """Everything the system knows about one workflow (see the module docstring)."""

    name: str
    summary: str
    phases: tuple[Phase, ...]
    submit: Callable[..., dict]
    validate: Callable[..., Any]
    failure_cleanup: Callable[["Resources", dict], None] | None = None
    #: ``plan(res, <request arguments>) -> dict``: what a run would do, read-only (None: no plan)
    plan: Callable[..., dict] | None = None
    #: the request argument ``backupctl run <name> TARGET`` fills, or None: the workflow takes no target
    target_argument: str | None = "table"
    #: whether ``backupctl run <name>`` needs TARGET (False: the request's default covers it)
    target_required: bool = True
    #: what TARGET is, for help and errors
    target_help: str = "DB.TABLE"
    #: a workflow without a target argument always covers this one target (its lock and record name it)
    fixed_target: str | None = None
    options: tuple[Option, ...] = ()
    #: the backupctl command that starts it (``run``, ``restore`` ...), and its name there (default: ``name``)
    verb: str = "run"
    cli_name: str | None = None
    #: one workflow serving several backup workflows (``retention``): the request argument that names the
    #: backup workflow, filled by the CLI sub-command (``backupctl retention edge-export ...``), and its choices
    kind_argument: str | None = None
    kinds: tuple[str, ...] = ()
    _by_name: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ConfigError(f"workflow {self.name}: phase names repeat: {names}")
        self._by_name.update({p.name: p for p in self.phases})
        if bool(self.kind_argument) != bool(self.kinds):
            raise ConfigError(f"workflow {self.name}: kind_argument and kinds go together")
        params = self.request_parameters()
        for name in ([self.target_argument] if self.target_argument else []) + [o.dest for o in self.options] + \
                ([self.kind_argument] if self.kind_argument else []):
            if name not in params:
                raise ConfigError(f"workflow {self.name}: CLI fills {name!r}, which submit() does not take")
        if self.plan is not None:
            planned = list(inspect.signature(self.plan).parameters)[1:]
            if planned != params:
                raise ConfigError(f"workflow {self.name}: plan() takes {planned}, the request is {params}")

    @property
    def task(self) -> str:
        """The public entry task name (``backup.edge_export``)."""
        return entry_task_name(self.name)

    @property
    def command(self) -> str:
        """How backupctl starts it: ``run edge-export``, ``restore edge-export`` ..."""
        return f"{self.verb} {'{' + ','.join(self.kinds) + '}' if self.kinds else self.cli_name or self.name}"

    @property
    def phase_names(self) -> list[str]:
        """Phase names in order (the job record's phase list; fan-out phases appear per item, so not here)."""
        return [p.name for p in self.phases if not p.fan_out]

    def phase(self, name: str) -> Phase:
        """The phase called ``name`` (``copy:acme`` → ``copy``); KeyError if none."""
        return self._by_name[name.split(":", 1)[0]]

    def phase_task(self, name: str) -> str:
        """The Celery task name of a phase (``backup.edge_export.transfer``)."""
        return f"{self.task}.{self.phase(name).name}"

    def request_parameters(self) -> list[str]:
        """The request argument names, in order: ``submit``'s parameters after ``res``, without ``job_id``."""
        params = list(inspect.signature(self.submit).parameters)[1:]
        return [p for p in params if p != "job_id"]

    def request_signature(self) -> inspect.Signature:
        """The entry task's signature: the request arguments, then ``idempotency_key=None``."""
        params = [p for name, p in inspect.signature(self.submit).parameters.items()
                  if name in self.request_parameters()]
        params.append(inspect.Parameter(IDEMPOTENCY_KEY, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None))
        return inspect.Signature(params)

    def request_from_cli(self, target: str | None, values: Mapping[str, Any], kind: str | None = None) -> dict:
        """The request keyword arguments of ``backupctl run``: the kind (the sub-command of a workflow with
        ``kinds``), the target, then each option's value."""
        request = {self.kind_argument: kind} if self.kind_argument else {}
        request.update({self.target_argument: target} if self.target_argument else {})
        request.update({o.dest: values.get(o.dest) for o in self.options})
        return request


def definition(name: str) -> Workflow:
    """The declaration of the registered workflow ``name`` (imports its module on first use)."""
    entry = WORKFLOWS.get(name)
    if entry is None:
        raise ConfigError(f"unknown workflow {name!r} (known: {', '.join(WORKFLOWS)})")
    found = getattr(importlib.import_module(entry.logic), "DEFINITION", None)
    if not isinstance(found, Workflow) or found.name != name:
        raise ConfigError(f"workflow {name!r}: module {entry.logic} has no DEFINITION named {name!r}")
    return found


def failure_cleanup_for(name: str, res: Any) -> Callable[[dict], None] | None:
    """The failure cleanup of workflow ``name`` bound to ``res`` (a ``Resources``, or a function returning one,
    called when the cleanup runs); None when the workflow declares none or is no longer registered (an old
    record of a workflow this deployment stopped running: nothing of it to clean)."""
    if name not in WORKFLOWS:
        return None
    cleanup = definition(name).failure_cleanup
    if cleanup is None:
        return None
    return lambda rec: cleanup(res() if callable(res) else res, rec)


def definitions() -> list[Workflow]:
    """Every registered workflow's declaration, in registration order."""
    return [definition(name) for name in WORKFLOWS]


def definition_of_task(task_name: str) -> tuple[Workflow, Phase | None] | None:
    """(workflow, phase) of a task name: the entry task gives (workflow, None); other names None."""
    for name, entry in WORKFLOWS.items():
        if task_name == entry.task:
            return definition(name), None
        if task_name.startswith(entry.task + "."):
            wf = definition(name)
            phase = wf._by_name.get(task_name[len(entry.task) + 1:])
            return (wf, phase) if phase else None
    return None


def reference_markdown() -> str:
    """The registered workflows as a markdown table (docs/enqueue-contract.md holds it; a test keeps it current)."""
    lines = ["| workflow | public task | request arguments | phases (queue) | `backupctl` |", "|---|---|---|---|---|"]
    for wf in definitions():
        args = ", ".join(f"`{p.name}`" if p.default is inspect.Parameter.empty else f"`{p.name}={p.default!r}`"
                         for p in wf.request_signature().parameters.values())
        phases = " → ".join(f"{p.name}{' ×N' if p.fan_out else ''} ({p.queue})" for p in wf.phases)
        target = wf.target_help if wf.target_argument else f"[{wf.fixed_target}]"
        cli = " ".join([f"`{wf.command}`", target] + [f"`{o.flag}`" for o in wf.options])
        lines.append(f"| {wf.name} | `{wf.task}` | {args} | {phases} | {cli} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m backup.workflow: through the package, not this __main__ copy of the classes
    from backup.workflow import reference_markdown as _reference

    print(_reference())
