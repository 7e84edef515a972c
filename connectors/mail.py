"""Alert email over SMTP (smtplib): optional STARTTLS and login, password from the environment."""

from __future__ import annotations

import smtplib
import socket
from email.message import EmailMessage

from base.errors import AuthFailed, ConnectionFailed, FatalError
from config.settings import Settings


def send_mail(s: Settings, subject: str, body: str) -> str:
    """Send one message to the configured recipients; returns its Message-ID."""
    cfg = s.smtp
    msg = EmailMessage()
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(cfg.to)
    if cfg.cc:
        msg["Cc"] = ", ".join(cfg.cc)
    msg["Subject"] = subject
    from email.utils import make_msgid

    msg["Message-ID"] = make_msgid(domain="mediation-backup")
    msg.set_content(body)
    what = f"smtp {cfg.host}:{cfg.port}"
    try:
        with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout) as smtp:
            if cfg.starttls:
                smtp.starttls()
            if cfg.user:
                pw = s.secret("BACKUP_SMTP_PASSWORD")
                smtp.login(cfg.user, pw.get_secret_value() if pw else "")
            smtp.send_message(msg, to_addrs=list(cfg.to) + list(cfg.cc))
    except smtplib.SMTPAuthenticationError as e:
        raise AuthFailed(f"{what}: login refused ({e.smtp_code})") from e
    except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, socket.timeout, OSError) as e:
        raise ConnectionFailed(f"{what}: {e}") from e
    except smtplib.SMTPException as e:
        raise FatalError(f"{what}: {e}") from e
    return msg["Message-ID"]
