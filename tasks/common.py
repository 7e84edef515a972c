"""What every phase task shares: the retry policy, phase bookkeeping and the chain's error handler."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Task

from backup.errors import BackupError, RetryableError, classify
from backup.resources import Resources
from backup.runner import PhaseContext, fail_job, phase
from config.settings import get_settings
from workers.app import app

log = logging.getLogger(__name__)

_resources: Resources | None = None

#: workflow name → cleanup run after a final failure (e.g. drop a remote temp file)
FAILURE_CLEANUP: dict[str, Callable[[Resources, dict], None]] = {}


def resources() -> Resources:
    """This process's resources, created on first use (after the worker forked)."""
    global _resources
    if _resources is None:
        _resources = Resources(get_settings())
    return _resources


class PhaseTask(Task):
    """Retry policy read from settings: retryable family only, exponential backoff with jitter."""

    abstract = True
    acks_late = True
    autoretry_for = (RetryableError,)
    retry_backoff = True
    retry_jitter = True
    phase_name: str = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        r = get_settings().retry
        cls.max_retries = r.max_retries
        cls.retry_backoff = r.backoff
        cls.retry_backoff_max = r.backoff_max


def make_phase_task(app, name: str, phase_name: str, func: Callable[[PhaseContext], dict], spark: bool = False):
    """Register a Celery task running one phase function with bookkeeping (``spark``: through ``Resources.spark()``,
    which runs it in this process on Spark Connect, or in a spark-submit driver)."""

    def run(self, payload: dict) -> dict:
        job_id = payload["job_id"]
        res = resources()
        with phase(res, job_id, phase_name, attempt=self.request.retries + 1) as ctx:
            if not ctx.active:
                if ctx.stale:  # the chain already went on without this delivery: do not start it again
                    self.request.chain = None
                    return {"job_id": job_id, "state": ctx.rec["state"], "stale": ctx.stale}
                return {"job_id": job_id, "state": ctx.rec["state"]}
            ctx.on_progress = progress_publisher(self)
            try:
                return res.spark().run_phase(func, ctx) if spark else func(ctx)
            except BackupError as e:
                _note_attempt(res, job_id, phase_name, e)
                raise
            except Exception as e:
                err = classify(e, phase_name)
                _note_attempt(res, job_id, phase_name, err)
                raise err from e

    run.__name__ = name.rsplit(".", 1)[-1]
    run.__doc__ = func.__doc__
    return app.task(name=name, bind=True, base=PhaseTask, phase_name=phase_name)(run)


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
    from backup.jobs import phase_entry

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
    cleanup = FAILURE_CLEANUP.get(rec["workflow"]) if rec else None
    fail_job(res, job_id, phase_name, exc, cleanup=(lambda r: cleanup(res, r)) if cleanup else None)


# Not bound and taking (request, exc, traceback): Celery then calls it in the failing worker itself.
on_chain_error = app.task(name="backup.on_chain_error")(_on_chain_error)
