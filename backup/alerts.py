"""One alert per failure episode per (workflow, target): an email and a ticket.

An episode starts with the first final failure of a target and ends with its
next success.  The episode key (``<prefix>:alert:<workflow>:<target>``) is
claimed with SET NX, so two failures racing each other still send once; it is
released only by a success, or when sending failed (so the next failure tries
again rather than staying silent).  Its value is ``<job id>:sending`` until the
mail and the ticket went out, then ``<job id>:sent``: a job whose alerting
process died in between is alerted again (at worst one duplicate, never none).
"""

from __future__ import annotations

import logging

import redis

from base.errors import BackupError
from config.settings import Settings

log = logging.getLogger(__name__)


class Alerter:
    """Send and de-duplicate alerts."""

    def __init__(self, settings: Settings, client: redis.Redis):
        self.s = settings
        self.r = client

    def _key(self, workflow: str, target: str) -> str:
        return f"{self.s.redis.key_prefix}:alert:{workflow}:{target}"

    def failure(self, rec: dict, error: str, status: str = "FAILED") -> dict:
        """Alert on a failed (or PARTIAL) job unless this episode already alerted; returns what happened."""
        if not self.s.alerts.enabled:
            return {"sent": False, "reason": "alerts disabled"}
        key = self._key(rec["workflow"], rec["target"])
        # The key says "<job id>:sending" until both channels answered, then "<job id>:sent": a job whose
        # alerting process died in between is alerted again when its failure is completed (stall check).
        if not self.r.set(key, f"{rec['job_id']}:sending", nx=True):
            first, _, state = (self.r.get(key) or b"?").decode().partition(":")
            if first != rec["job_id"]:
                return {"sent": False, "reason": f"episode already alerted by job {first}"}
            if state != "sending":  # a redelivered error handler of the job that alerted
                return {"sent": True, "reason": "already sent for this job"}
            log.warning("alert for job %s was claimed but never confirmed sent; sending it again", rec["job_id"])
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

        try:
            mail_id = send_mail(self.s, subject, body)
            ticket = open_ticket(self.s, {"title": subject, "description": body, "job_id": rec["job_id"],
                                          "workflow": rec["workflow"], "target": rec["target"],
                                          "phase": rec.get("phase"), "error": error, "severity": "major"})
        except BackupError as e:
            self.r.delete(key)
            log.error("alert for job %s could not be sent: %s", rec["job_id"], e.one_line())
            return {"sent": False, "reason": f"sending failed: {e.one_line()}"}
        self.r.set(key, f"{rec['job_id']}:sent")
        return {"sent": True, "mail": mail_id, "ticket": ticket}

    def success(self, workflow: str, target: str) -> None:
        """End the failure episode of a target."""
        self.r.delete(self._key(workflow, target))
