"""What every phase task shares: the retry policy, phase bookkeeping and the chain's error handler."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from celery import Task

from base.errors import BackupError, classify
from base.identifiers import check_job_id
from backup.jobs import phase_entry
from backup.resources import Resources
from backup.retry import gave_up, next_retry
from backup.runner import PhaseContext, fail_job, phase
from backup.workflow import definition, definition_of_task, failure_cleanup_for
from config.settings import get_settings
from workers.app import app

log = logging.getLogger(__name__)

_resources: Resources | None = None


def resources() -> Resources:
    """This process's resources, created on first use (after the worker forked)."""
    global _resources
    if _resources is None:
        _resources = Resources(get_settings())
    return _resources


class PhaseTask(Task):
    """A phase: late acks; retryable errors retried within the time budget of backup/retry.py."""

    abstract = True
    acks_late = True
    max_retries = None  # the budget decides (retry_or_raise), not Celery's count
    phase_name: str = ""

    def retry_or_raise(self, err: BackupError, started: float | None):
        """Retry the phase after ``err`` if the budget allows, else raise ``err`` as its final failure."""
        policy = resources().settings.retry
        retries = self.request.retries
        elapsed = time.time() - (started or time.time())
        wait = next_retry(policy, retries, elapsed) if err.retryable else None
        if wait is None:
            if err.retryable:
                raise type(err)(f"{err} ({gave_up(policy, retries, elapsed)})") from err
            raise err
        log.warning("%s: retry %d in %.1fs (%.0fs of retry.budget %ds used): %s", self.name, retries + 1, wait,
                    elapsed, policy.budget, err.one_line())
        raise self.retry(exc=err, countdown=wait)


def make_phase_task(app, name: str, phase_name: str, func: Callable[[PhaseContext], dict], spark: bool = False):
    """Register a Celery task running one phase function with bookkeeping (``spark``: through ``Resources.spark()``,
    which runs it in this process on Spark Connect, or in a spark-submit driver)."""

    def run(self, payload: dict) -> dict:
        # A phase is internal, yet anyone who can write to the broker can send one: the job id names a record,
        # lock keys and (through the run id) files, so it passes the entry's rule here too.
        job_id = check_job_id(payload.get("job_id") if isinstance(payload, dict) else None)
        res = resources()
        started = None  # of the phase's first attempt; unknown if entering the phase failed
        try:
            # Entering the phase is inside the try: a Redis hiccup there (the first lock renewal, the
            # delivery count) is retried within the budget like any other retryable failure.
            with phase(res, job_id, phase_name, attempt=self.request.retries + 1) as ctx:
                if not ctx.active:
                    if ctx.stale:  # the chain already went on without this delivery: do not start it again
                        self.request.chain = None
                        return {"job_id": job_id, "state": ctx.rec["state"], "stale": ctx.stale}
                    return {"job_id": job_id, "state": ctx.rec["state"]}
                started = phase_entry(ctx.rec, phase_name).get("started")
                ctx.on_progress = progress_publisher(self)
                result = res.spark().run_phase(func, ctx) if spark else func(ctx)
            after_success(res, name, job_id)
            return result
        except Exception as e:
            err = classify(e, phase_name)
            _note_attempt(res, job_id, phase_name, err)
            try:
                self.retry_or_raise(err, started)
            except BackupError as final:
                if final is e:
                    raise
                raise final from e

    run.__name__ = name.rsplit(".", 1)[-1]
    run.__doc__ = func.__doc__
    return app.task(name=name, bind=True, base=PhaseTask, phase_name=phase_name)(run)


def after_success(res: Resources, task_name: str, job_id: str) -> None:
    """After the last phase of a backup: enqueue ``backup.retention`` for its target if the run succeeded and
    retention has a rule for it.  The one place retention follows a backup; a phase that is not a backup's
    last costs nothing (no Redis read).

    Its idempotency key names the backup run, so a redelivered last phase enqueues it once.  A failure to
    enqueue is logged, never the backup's: the scheduled retention run catches up.
    """
    from backup.retention import COVERED, after_backup_request  # here: tasks.common is imported by every workflow

    found = definition_of_task(task_name)
    if found is None or found[1] is None or found[0].name not in COVERED \
            or found[1].name != found[0].phases[-1].name:
        return
    try:
        rec = res.jobs.find(job_id)
        request = after_backup_request(res, rec) if rec else None
        if request:
            app.send_task(definition("retention").task, kwargs=request)
            log.info("retention of %s %s enqueued after job %s", rec["workflow"], rec["target"], job_id)
    except Exception as e:
        log.warning("retention after job %s not enqueued (the scheduled run will catch up): %s", job_id, e)


def progress_publisher(task: Task) -> Callable[[dict], None]:
    """Publish progress as task state (result backend) and as a ``task-progress`` event (Flower)."""
    # The request is thread-local and export streams report from threads: capture it here.
    task_id, hostname = task.request.id, task.request.hostname

    def publish(meta: dict) -> None:
        try:
            task.update_state(task_id=task_id, state="PROGRESS", meta=meta)
            with task.app.events.default_dispatcher(hostname=hostname) as dispatcher:
                dispatcher.send("task-progress", uuid=task_id, state="PROGRESS", progress=meta)
        except Exception as e:  # progress is best effort; the copy itself must not fail over it
            log.warning("progress event for %s not sent: %s", task_id, e)
    return publish


def _note_attempt(res: Resources, job_id: str, phase_name: str, err: BackupError) -> None:
    """Keep the latest attempt's error on the phase, so retries are visible while they happen."""
    def change(rec):
        phase_entry(rec, phase_name)["last_error"] = err.one_line()
    try:
        res.jobs.update(job_id, change)
    except BackupError:
        pass


def _on_chain_error(request, exc, traceback):
    """Errback of every chain: record the final failure, clean up, alert once, release the lock."""
    payload = (request.args or [{}])[0]
    job_id = payload.get("job_id") if isinstance(payload, dict) else None
    if not job_id:
        log.error("chain error without a job id: %r", exc)
        return
    res = resources()
    phase_name = request.task.rsplit(".", 1)[-1] if request.task else None
    rec = res.jobs.find(job_id)
    fail_job(res, job_id, phase_name, exc, cleanup=cleanup_for(rec["workflow"]) if rec else None)


def cleanup_for(workflow: str) -> Callable[[dict], None] | None:
    """The failure cleanup of a workflow (its declaration's ``failure_cleanup``), bound to this process's resources."""
    return failure_cleanup_for(workflow, resources)


# Not bound and taking (request, exc, traceback): Celery then calls it in the failing worker itself.
on_chain_error = app.task(name="backup.on_chain_error")(_on_chain_error)

