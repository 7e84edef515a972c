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
``FLOWER_UNAUTHENTICATED_API`` opens the whole API and is refused.
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


def run(settings, address: str | None = None, port: int | None = None) -> None:
    """Check the login settings, then run Flower in the foreground."""
    check_auth(settings)
    from workers.app import app

    app.start(flower_argv(settings, address, port))
