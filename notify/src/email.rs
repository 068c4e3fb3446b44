//! `email`: one mail per notification over SMTP (lettre), the summary in
//! the subject. STARTTLS when `starttls` (the default) and then required;
//! credentials are `username` and the first line of `password_file`, read
//! at each send, never given on a command line.

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message as Mail, Tokio1Executor};

use super::{Message, Outcome, rfc3339, summary};
use picket_alert::rules::NotifierKind;

/// The subject: `[FIRING:1] vm-prod has sent nothing for 31s`.
pub fn subject(msg: &Message) -> String {
    let mut s = format!("[{}", msg.status.to_uppercase());
    if msg.status == "firing" {
        s.push_str(&format!(":{}", msg.firing()));
    }
    s.push_str("] ");
    s.push_str(msg.alerts.first().map(summary).unwrap_or("(no alerts)"));
    if msg.alerts.len() > 1 {
        s.push_str(&format!(" (and {} more)", msg.alerts.len() - 1));
    }
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

pub fn body(msg: &Message) -> String {
    let mut b = String::new();
    for a in &msg.alerts {
        b.push_str(&format!(
            "{} [{}] {}\n",
            a.rule,
            a.state.as_str(),
            summary(a)
        ));
        if let Some(t) = a.started_ms {
            b.push_str(&format!("  started: {}\n", rfc3339(t)));
        }
        if let Some(t) = a.ended_ms {
            b.push_str(&format!("  ended:   {}\n", rfc3339(t)));
        }
        if !a.value.is_empty() {
            b.push_str(&format!("  value:   {}\n", a.value));
        }
        for (k, v) in &a.labels {
            b.push_str(&format!("  {k} = {v}\n"));
        }
        b.push('\n');
    }
    b.push_str(&format!("fingerprints: {}\n", {
        let f: Vec<&str> = msg.alerts.iter().map(|a| a.fingerprint.as_str()).collect();
        f.join(" ")
    }));
    b
}

pub async fn send(kind: &NotifierKind, msg: &Message) -> Outcome {
    let NotifierKind::Email {
        smtp,
        starttls,
        from,
        to,
        username,
        password_file,
    } = kind
    else {
        return Outcome::Refused("not an email notifier".into());
    };
    let mail = match build(from, to, msg) {
        Ok(m) => m,
        Err(e) => return Outcome::Refused(e),
    };
    let (host, port) = match smtp.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) => (h, p),
            Err(_) => return Outcome::Refused(format!("smtp {smtp:?}: bad port")),
        },
        None => (smtp.as_str(), 587),
    };
    let builder = if *starttls {
        match AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host) {
            Ok(b) => b,
            Err(e) => return Outcome::Refused(format!("smtp {host}: {e}")),
        }
    } else {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
    };
    let mut builder = builder.port(port).timeout(Some(super::http::TIMEOUT));
    if let Some(user) = username {
        // Read on the blocking pool (tokio::fs), never on a worker.
        let read = match password_file.as_deref() {
            Some(f) => Some(tokio::fs::read_to_string(f).await),
            None => None,
        };
        let password = match read {
            Some(Ok(p)) => p.lines().next().unwrap_or_default().to_string(),
            Some(Err(e)) => return Outcome::Failed(format!("password_file: {e}")),
            None => String::new(),
        };
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    match builder.build().send(mail).await {
        Ok(_) => Outcome::Sent,
        // A permanent SMTP answer (5xx: no such mailbox, relaying denied)
        // will not change by retrying.
        Err(e) if e.is_permanent() => Outcome::Refused(format!("smtp {smtp}: {e}")),
        Err(e) => Outcome::Failed(format!("smtp {smtp}: {e}")),
    }
}

fn build(from: &str, to: &[String], msg: &Message) -> Result<Mail, String> {
    let mut m = Mail::builder()
        .from(from.parse().map_err(|e| format!("from {from:?}: {e}"))?)
        .subject(subject(msg))
        .header(ContentType::TEXT_PLAIN);
    for t in to {
        m = m.to(t.parse().map_err(|e| format!("to {t:?}: {e}"))?);
    }
    m.body(body(msg))
        .map_err(|e| format!("cannot build the mail: {e}"))
}
