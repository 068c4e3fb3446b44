"""An aiosmtpd handler for the alert tests: prints each mail it receives
as one JSON line (envelope, decoded subject, body) on stdout.

    PYTHONPATH=tests/tools python3 -u -m aiosmtpd -n -l 127.0.0.1:2525 -c smtp_sink.Sink
"""

import email
import email.policy
import json
import sys


class Sink:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain",))
        print(
            json.dumps(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": envelope.rcpt_tos,
                    "from": str(msg["From"]),
                    "to": str(msg["To"]),
                    "subject": str(msg["Subject"]),
                    "body": body.get_content() if body is not None else "",
                }
            ),
            flush=True,
        )
        sys.stdout.flush()
        return "250 Message accepted for delivery"
