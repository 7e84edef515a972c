"""A trivial workflow added the way issue 17 promises: this one module and one registry entry, nothing else.

It declares its phases (lock → greet [io queue] → finish), its request
(``greeting``), a CLI option, and registers its Celery tasks; a worker started
with ``celery -A tests.hello_workflow worker`` runs it.  The entry is
registered at import (a real workflow's entry is one line in
config/workflows.py); tests/integration/test_workflow_registry.py removes it again.
"""

from __future__ import annotations

import re
import uuid

from backup.enqueue import fail_request
from backup.resources import Resources
from backup.runner import PhaseContext, finish_job, take_lock
from backup.workflow import Option, Phase, Workflow
from base.errors import InvalidInput
from config.workflows import WorkflowEntry, register

ENTRY = register(WorkflowEntry("hello", logic=__name__, tasks=__name__))
TARGET = "world"


def validate_request(res: Resources, greeting: str = "hello") -> str:
    """A greeting is 1-20 lower-case letters."""
    if not isinstance(greeting, str) or not re.fullmatch(r"[a-z]{1,20}", greeting):
        raise InvalidInput(f"invalid greeting {str(greeting)[:40]!r}: use 1-20 lower-case letters")
    return greeting


def submit(res: Resources, greeting: str = "hello", job_id: str | None = None) -> dict:
    """Create the job record; a bad greeting is recorded as failed and starts nothing."""
    job_id = job_id or uuid.uuid4().hex
    rec = res.jobs.create(job_id, ENTRY.name, TARGET, {"greeting": greeting}, DEFINITION.phase_names)
    try:
        validate_request(res, greeting)
    except InvalidInput as e:
        return fail_request(res, job_id, e)
    return rec


def lock_phase(ctx: PhaseContext) -> dict:
    return take_lock(ctx, ENTRY.name)


def greet_phase(ctx: PhaseContext) -> dict:
    ctx.commit_check()
    ctx.done({"said": f"{ctx.rec['args']['greeting']}, {TARGET}"})
    return {"job_id": ctx.job_id, "state": "running"}


def finish_phase(ctx: PhaseContext) -> dict:
    rec = finish_job(ctx)
    return {"job_id": ctx.job_id, "state": rec["state"]}


DEFINITION = Workflow(
    name=ENTRY.name,
    summary="say hello (a test workflow)",
    phases=(Phase("lock", lock_phase), Phase("greet", greet_phase, queue="io"), Phase("finish", finish_phase)),
    submit=submit,
    validate=validate_request,
    target_argument=None,
    target_help="the world",
    fixed_target=TARGET,
    options=(Option("--greeting", "greeting", "what to say"),),
)

# The thin tasks part, in the same module here; ``app`` lets ``celery -A tests.hello_workflow`` find the app.
from tasks.workflow import register_workflow  # noqa: E402  (after DEFINITION: the tasks are made from it)
from workers.app import app  # noqa: E402

TASKS = register_workflow(app, DEFINITION)
