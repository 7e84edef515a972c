"""Alert email over SMTP (smtplib): STARTTLS or implicit TLS with a verifying context, login, password from the
environment.  Login without TLS is refused at config load (config/settings.py SmtpSettings)."""

from __future__ import annotations

import smtplib
import socket
import ssl
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
    # Certificate chain and host name checked (ca_cert, else the system CAs); smtplib's starttls() without a
    # context would accept any certificate.
    context = ssl.create_default_context(cafile=str(s.path(cfg.ca_cert)) if cfg.ca_cert else None) \
        if (cfg.starttls or cfg.ssl) else None
    try:
        client = (smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=context) if cfg.ssl
                  else smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout))
        with client as smtp:
            if cfg.starttls:
                smtp.starttls(context=context)
            if cfg.user:
                pw = s.secret("BACKUP_SMTP_PASSWORD")
                smtp.login(cfg.user, pw.get_secret_value() if pw else "")
            smtp.send_message(msg, to_addrs=list(cfg.to) + list(cfg.cc))
    except smtplib.SMTPAuthenticationError as e:
        raise AuthFailed(f"{what}: login refused ({e.smtp_code})") from e
    except ssl.SSLCertVerificationError as e:  # fatal: the same certificate is refused on every try
        raise AuthFailed(f"{what}: TLS certificate refused ({e.verify_message or e})") from e
    except smtplib.SMTPNotSupportedError as e:  # STARTTLS configured, the server does not offer it
        raise FatalError(f"{what}: {e}; refusing to send without TLS") from e
    except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, socket.timeout, OSError) as e:
        raise ConnectionFailed(f"{what}: {e}") from e
    except smtplib.SMTPException as e:
        raise FatalError(f"{what}: {e}") from e
    return msg["Message-ID"]
