"""Which workflows this deployment runs: one entry per workflow, read by the app, routes, CLI, schedules and docs.

An entry is plain data (names of modules, no imports), so loading the
configuration can check a schedule's ``workflow`` without importing any
workflow code::

    WorkflowEntry("edge-export", logic="backup.edge_export", tasks="tasks.edge_export")

``logic`` names the module holding the workflow's declaration
(``DEFINITION``, a ``backup.workflow.Workflow``: phases, request, cleanup,
CLI options); ``tasks`` names the module registering its Celery tasks.
Adding a workflow is one module in ``backup/``, one thin module in
``tasks/`` and one ``register`` call here.

The public entry task of a workflow is named after it, for services that
enqueue by name: ``edge-export`` → ``backup.edge_export``; its phases are
``backup.edge_export.<phase>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from base.errors import ConfigError

_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

#: task names that are not workflows (beat's stall check, the chains' error handler)
RESERVED_TASKS = frozenset({"backup.stall_check", "backup.on_chain_error"})


def entry_task_name(workflow: str) -> str:
    """The public task name of a workflow: ``backup.`` + the name with ``_`` for ``-``."""
    return "backup." + workflow.replace("-", "_")


@dataclass(frozen=True)
class WorkflowEntry:
    """One registered workflow: its name and the two modules that make it."""

    name: str
    logic: str
    tasks: str

    @property
    def task(self) -> str:
        """The public entry task name (``backup.edge_export``)."""
        return entry_task_name(self.name)


#: name → entry, in registration order (the order the CLI and docs list them)
WORKFLOWS: dict[str, WorkflowEntry] = {}


def register(entry: WorkflowEntry) -> WorkflowEntry:
    """Add a workflow; ConfigError if its name or modules are malformed or the name is taken."""
    if not _NAME.fullmatch(entry.name):
        raise ConfigError(f"workflow name {entry.name!r}: use lower-case words joined by '-' (e.g. edge-export)")
    for label, module in (("logic", entry.logic), ("tasks", entry.tasks)):
        if not _MODULE.fullmatch(module):
            raise ConfigError(f"workflow {entry.name}: {label} module {module!r} is not a dotted module name")
    if entry.name in WORKFLOWS and WORKFLOWS[entry.name] != entry:
        raise ConfigError(f"workflow {entry.name!r} is already registered ({WORKFLOWS[entry.name]})")
    if entry.task in RESERVED_TASKS:
        raise ConfigError(f"workflow {entry.name!r}: its task name {entry.task} is reserved")
    WORKFLOWS[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove a workflow (tests that add one of their own take it away again)."""
    WORKFLOWS.pop(name, None)


def workflow_tasks() -> dict[str, str]:
    """Workflow name → public entry task name."""
    return {name: e.task for name, e in WORKFLOWS.items()}


register(WorkflowEntry("edge-export", logic="backup.edge_export", tasks="tasks.edge_export"))
register(WorkflowEntry("table-backup", logic="backup.table_backup", tasks="tasks.table_backup"))
register(WorkflowEntry("customer-files", logic="backup.customer_files", tasks="tasks.customer_files"))
register(WorkflowEntry("restore-edge-export", logic="backup.restore_edge_export", tasks="tasks.restore_edge_export"))
register(WorkflowEntry("restore-table-backup", logic="backup.restore_table_backup", tasks="tasks.restore_table_backup"))
register(WorkflowEntry("restore-customer-files", logic="backup.restore_customer_files",
                       tasks="tasks.restore_customer_files"))
register(WorkflowEntry("retention", logic="backup.retention", tasks="tasks.retention"))
register(WorkflowEntry("restore-drill", logic="backup.restore_drill", tasks="tasks.restore_drill"))
