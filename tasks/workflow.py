"""Celery tasks made from a workflow's declaration (backup/workflow.py): its entry task, its phases, its chain."""

from __future__ import annotations

from collections.abc import Callable

from celery import Task, chain

from backup.workflow import IDEMPOTENCY_KEY, Workflow
from tasks.common import make_phase_task, on_chain_error, resources
from tasks.entry import EntryTask, start_job


def linear_chain(phase_tasks: dict[str, Task], wf: Workflow, job_id: str):
    """The phases in declared order, each taking the previous one's result, failing into the error handler."""
    first, *rest = [phase_tasks[name] for name in wf.phase_names]
    return chain(first.s({"job_id": job_id}), *(t.s() for t in rest)).on_error(on_chain_error.s())


def register_workflow(celery_app, wf: Workflow, build_chain: Callable[[dict], object] | None = None) -> dict[str, Task]:
    """Register a workflow's Celery tasks from its declaration; returns them by phase name (``"entry"`` too).

    The entry task ``wf.task`` takes the request arguments of ``wf.submit``
    (plus ``idempotency_key``) and starts ``build_chain(record)``, by
    default the phases in order (``linear_chain``).  Fan-out phases are
    left to the workflow's tasks module.
    """
    phase_tasks = {p.name: make_phase_task(celery_app, wf.phase_task(p.name), p.name, p.run, spark=p.spark)
                   for p in wf.phases if not p.fan_out}
    build = build_chain or (lambda rec: linear_chain(phase_tasks, wf, rec["job_id"]))

    def run(self, *args, **kwargs) -> dict:
        bound = wf.request_signature().bind(*args, **kwargs)  # EntryTask checked the names already
        bound.apply_defaults()
        request = dict(bound.arguments)
        idempotency_key = request.pop(IDEMPOTENCY_KEY)
        return start_job(self, idempotency_key, lambda: wf.submit(resources(), job_id=self.request.id, **request),
                         build)

    run.__name__ = wf.task.rsplit(".", 1)[-1]
    run.__doc__ = f"Public entry task of {wf.name} ({wf.summary}): validate the request, create the job record " \
                  f"and start the phase chain.  Arguments: {wf.request_signature()}."
    entry = celery_app.task(name=wf.task, bind=True, acks_late=True, base=EntryTask, workflow=wf.name,
                            request_signature=wf.request_signature())(run)
    return {"entry": entry, **phase_tasks}
