"""Flower, the Celery monitor, with a login required: ``backupctl flower``.

Authentication, checked before Flower starts (it refuses to start without):

* basic auth: ``FLOWER_BASIC_AUTH=user:password[,user2:password2]`` in the
  environment.  Flower reads the variable itself, so the passwords never
  appear on a command line;
* or OAuth2: ``flower.auth_provider`` (e.g. ``flower.views.auth.GithubLoginHandler``),
  ``flower.auth`` (regular expression of allowed e-mails), ``flower.oauth2_key``
  and ``flower.oauth2_redirect_uri`` in the config, and the client secret in
  ``FLOWER_OAUTH2_SECRET``.

Flower serves ``/metrics`` (its own Prometheus metrics) and ``/healthcheck``
without any login; put Flower behind a network boundary that lets only the
scraper and the healthcheck reach those paths (docs/operations.md).
``FLOWER_UNAUTHENTICATED_API`` opens the whole API and is refused.  The task API sends only
the public entry tasks (``restrict_task_api``); internal phase tasks are refused with 403.
"""

from __future__ import annotations

import os

from base.errors import ConfigError


def check_auth(settings) -> str:
    """Which login Flower will use ("basic" or "oauth"); ConfigError if none or a malformed one."""
    if os.environ.get("FLOWER_UNAUTHENTICATED_API", "").strip().lower() not in ("", "0", "false", "no", "off"):
        raise ConfigError("FLOWER_UNAUTHENTICATED_API is set: it opens Flower's API to anyone; unset it")
    basic = settings.secret("FLOWER_BASIC_AUTH")
    if basic:
        for n, entry in enumerate(basic.get_secret_value().split(","), 1):
            user, sep, password = entry.partition(":")
            if not (user.strip() and sep and password):
                raise ConfigError(f"FLOWER_BASIC_AUTH: entry {n} is not user:password (value not shown)")
        return "basic"
    f = settings.flower
    if f.auth_provider:
        missing = [name for name, value in (("flower.auth", f.auth), ("flower.oauth2_key", f.oauth2_key),
                                            ("flower.oauth2_redirect_uri", f.oauth2_redirect_uri),
                                            ("FLOWER_OAUTH2_SECRET", settings.secret("FLOWER_OAUTH2_SECRET")))
                   if not value]
        if missing:
            raise ConfigError(f"Flower OAuth ({f.auth_provider}) needs {', '.join(missing)}")
        return "oauth"
    raise ConfigError("Flower needs a login: set FLOWER_BASIC_AUTH=user:password, or configure OAuth "
                      "(flower.auth_provider and FLOWER_OAUTH2_SECRET; see docs/operations.md)")


def flower_argv(settings, address: str | None = None, port: int | None = None) -> list[str]:
    """``celery flower`` arguments from settings (never a secret: those stay in the environment)."""
    f = settings.flower
    argv = ["flower", f"--address={address or f.address}", f"--port={port or f.port}",
            f"--max_tasks={f.max_tasks}"]
    if f.auth_provider:
        argv += [f"--auth_provider={f.auth_provider}", f"--auth={f.auth}", f"--oauth2_key={f.oauth2_key}",
                 f"--oauth2_redirect_uri={f.oauth2_redirect_uri}"]
    return argv


def restrict_task_api(public: set[str]) -> None:
    """Let Flower's task-sending API (``/api/task/apply``, ``async-apply``, ``send-task``) start only the public
    entry tasks: an internal phase (``backup.edge_export.cleanup``) trusts its job record and must never be
    sent by hand (403).  The entry tasks check their requests and job ids like any other caller's."""
    from flower.api import tasks
    from tornado.web import HTTPError

    for handler in (tasks.TaskApply, tasks.TaskAsyncApply, tasks.TaskSend):
        original = getattr(handler.post, "__wrapped_by_backup__", handler.post)

        async def post(self, taskname, _original=original):
            if taskname not in public:
                raise HTTPError(403, f"only the public entry tasks can be sent from Flower, not {taskname[:100]!r}")
            return await _original(self, taskname)

        post.__wrapped_by_backup__ = original
        handler.post = post


def run(settings, address: str | None = None, port: int | None = None) -> None:
    """Check the login settings, then run Flower in the foreground (its task API limited to the public tasks)."""
    check_auth(settings)
    from config.workflows import workflow_tasks
    from workers.app import app

    restrict_task_api(set(workflow_tasks().values()))

    app.start(flower_argv(settings, address, port))
