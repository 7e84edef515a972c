"""One alert per failure episode per (workflow, target): an email and a ticket.

An episode starts with the first final failure of a target and ends with its
next success.  The episode key (``<prefix>:alert:<workflow>:<target>``) is
claimed atomically (WATCH/MULTI), so two failures racing each other still send
once.  Its value is ``<job id>:sending:<channels>`` while those channels are
being sent, ``<job id>:sent`` once every channel went out, and
``<job id>:owed:<channels>`` when some channel failed: the episode stays open
for those channels only, so the next failure sends them (and not the ones that
already went out).  A job whose alerting process died while sending is alerted
again (at worst one duplicate, never none).

Every error of a channel is caught (a malformed HTTP answer, a refused
certificate, a bug): it is returned, to be recorded in the job, and never
escapes the alert path, which would leave the job ``running`` and the episode
claimed with nothing sent.
"""

from __future__ import annotations

import logging

import redis

from base.errors import classify
from config.settings import Settings

log = logging.getLogger(__name__)

#: the alert channels, in sending order
CHANNELS = ("mail", "ticket")


class Alerter:
    """Send and de-duplicate alerts."""

    def __init__(self, settings: Settings, client: redis.Redis):
        self.s = settings
        self.r = client

    def _key(self, workflow: str, target: str) -> str:
        return f"{self.s.redis.key_prefix}:alert:{workflow}:{target}"

    def _claim(self, key: str, job_id: str) -> tuple[list[str], str | None]:
        """Atomically take the episode for ``job_id``: the channels it must send, or ([], why not)."""
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    first, _, rest = (raw.decode() if raw else "").partition(":")
                    state, _, listed = rest.partition(":")
                    owed = [c for c in listed.split(",") if c in CHANNELS] or list(CHANNELS)
                    if raw is None:
                        channels = list(CHANNELS)
                    elif state == "sent":
                        pipe.unwatch()
                        return [], ("already sent for this job" if first == job_id
                                    else f"episode already alerted by job {first}")
                    elif state == "sending" and first != job_id:
                        pipe.unwatch()
                        return [], f"episode already alerted by job {first} (sending)"
                    else:  # owed channels of an earlier failure, or this job's own interrupted sending
                        if state == "sending":
                            log.warning("alert for job %s was claimed but never confirmed sent; sending it again", job_id)
                        channels = owed
                    pipe.multi()
                    pipe.set(key, f"{job_id}:sending:{','.join(channels)}")
                    pipe.execute()
                    return channels, None
                except redis.WatchError:
                    continue

    def failure(self, rec: dict, error: str, status: str = "FAILED") -> dict:
        """Alert on a failed (or PARTIAL) job unless this episode already alerted; returns what happened, per
        channel (``mail``/``ticket``: ``{"sent": True, "id": ...}`` or ``{"sent": False, "error": ...}``)."""
        if not self.s.alerts.enabled:
            return {"sent": False, "reason": "alerts disabled"}
        key = self._key(rec["workflow"], rec["target"])
        channels, why_not = self._claim(key, rec["job_id"])
        if not channels:
            return {"sent": why_not == "already sent for this job", "reason": why_not}
        subject = f"[mediation-backup] {rec['workflow']} {rec['target']} {status} in {rec.get('phase')}"
        body = "\n".join([
            f"Workflow: {rec['workflow']}",
            f"Target:   {rec['target']}",
            f"Job id:   {rec['job_id']}",
            f"Phase:    {rec.get('phase')}",
            f"Error:    {error}",
            "",
            f"Details:  backupctl status {rec['job_id']}",
            "Further failures of this target will not alert again until it succeeds once.",
        ])
        from connectors.mail import send_mail
        from connectors.ticket import open_ticket

        send = {
            "mail": lambda: send_mail(self.s, subject, body),
            "ticket": lambda: open_ticket(self.s, {"title": subject, "description": body, "job_id": rec["job_id"],
                                                   "workflow": rec["workflow"], "target": rec["target"],
                                                   "phase": rec.get("phase"), "error": error, "severity": "major"}),
        }
        out: dict = {}
        for channel in channels:
            try:
                out[channel] = {"sent": True, "id": send[channel]()}
            except Exception as e:  # every error: one channel failing must not silence the other, nor later alerts
                line = classify(e, f"alert {channel}").one_line()
                log.error("alert %s for job %s could not be sent: %s", channel, rec["job_id"], line)
                out[channel] = {"sent": False, "error": line}
        failed = [c for c in channels if not out[c]["sent"]]
        self.r.set(key, f"{rec['job_id']}:owed:{','.join(failed)}" if failed else f"{rec['job_id']}:sent")
        if failed:
            reasons = "; ".join(out[c]["error"] for c in failed)
            return {"sent": False, "reason": f"sending failed: {reasons}", **out}
        return {"sent": True, **out}

    def success(self, workflow: str, target: str) -> None:
        """End the failure episode of a target."""
        self.r.delete(self._key(workflow, target))
