//! `http` and `tcp` steps: a GET that must answer `expect_status`, or a
//! TCP connect, tried `retries + 1` times, `interval` apart, each within
//! `timeout`.

use std::time::{Duration, Instant};

use picket_proto::model::rollout::Probe;
use picket_proto::v1::StepState;
use tokio_util::sync::CancellationToken;

use super::ledger::Outcome;
use super::process::{Tail, ms};

pub enum Target<'a> {
    Http { url: &'a str, expect_status: u16 },
    Tcp { addr: &'a str },
}

pub async fn run(
    target: Target<'_>,
    probe: Probe,
    timeout: Duration,
    cancel: CancellationToken,
    mut live: impl FnMut(&[u8]),
) -> Outcome {
    let started = Instant::now();
    let mut tail = Tail::default();
    let client = match &target {
        Target::Http { .. } => match reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
        {
            Ok(c) => Some(c),
            Err(e) => {
                return Outcome {
                    duration_ms: ms(started.elapsed()),
                    ..Outcome::failed(format!("cannot make an HTTP client: {e}"))
                };
            }
        },
        Target::Tcp { .. } => None,
    };
    let attempts = probe.retries.saturating_add(1);
    let mut ok = false;
    for attempt in 1..=attempts {
        let line = tokio::select! {
            _ = cancel.cancelled() => {
                tail.push(b"[picket] cancelled\n");
                break;
            }
            line = once(&target, client.as_ref(), timeout) => line,
        };
        let (passed, text) = line;
        let text = format!("attempt {attempt}/{attempts}: {text}\n");
        tail.push(text.as_bytes());
        live(text.as_bytes());
        if passed {
            ok = true;
            break;
        }
        if attempt < attempts {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(probe.interval) => {}
            }
        }
    }
    Outcome {
        state: if ok {
            StepState::Succeeded
        } else {
            StepState::Failed
        } as i32,
        exit_code: None,
        duration_ms: ms(started.elapsed()),
        output: tail.text(),
    }
}

async fn once(
    target: &Target<'_>,
    client: Option<&reqwest::Client>,
    timeout: Duration,
) -> (bool, String) {
    match (target, client) {
        (Target::Http { url, expect_status }, Some(client)) => {
            match client.get(*url).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (
                        status == *expect_status,
                        format!("GET {url}: {status} (expected {expect_status})"),
                    )
                }
                Err(e) => (false, format!("GET {url}: {}", error_chain(&e))),
            }
        }
        (Target::Tcp { addr }, _) => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(*addr)).await {
                Ok(Ok(_)) => (true, format!("connected to {addr}")),
                Ok(Err(e)) => (false, format!("connect {addr}: {e}")),
                Err(_) => (
                    false,
                    format!("connect {addr}: no answer within {timeout:?}"),
                ),
            }
        }
        (Target::Http { url, .. }, None) => (false, format!("GET {url}: no client")),
    }
}

/// reqwest's error with its causes ("error sending request: connection
/// refused"), so that the output says what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_fails_after_its_retries_and_an_open_one_passes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let probe = Probe {
            retries: 2,
            interval: Duration::from_millis(10),
        };
        let t = Duration::from_secs(2);
        let o = run(
            Target::Tcp { addr: &closed },
            probe,
            t,
            CancellationToken::new(),
            |_| {},
        )
        .await;
        assert_eq!(o.state, StepState::Failed as i32);
        assert_eq!(o.output.matches("attempt").count(), 3, "{}", o.output);
        let o = run(
            Target::Tcp { addr: &open },
            probe,
            t,
            CancellationToken::new(),
            |_| {},
        )
        .await;
        assert_eq!(o.state, StepState::Succeeded as i32, "{}", o.output);
    }
}
