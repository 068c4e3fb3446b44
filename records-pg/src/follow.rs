//! Learning that records were committed, through any replica: a
//! connection of its own that `LISTEN`s on [`CHANNEL`] (each storing
//! transaction notifies it at commit), and a tick besides, since a
//! notification sent while that connection is being made again is lost.
//! What was committed is then read by id (ids are in commit order), so a
//! notification carries nothing but "look".

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::Socket;
use tokio_postgres::tls::MakeTlsConnect;

use crate::{CHANNEL, PgRecords};

impl PgRecords {
    /// A [`Notify`] woken after each commit of records by any replica,
    /// and every `every` at least. Wakes coalesce: one wake may stand for
    /// many commits. Stops with the [`PgRecords`].
    pub fn follow(&self, every: Duration) -> Arc<Notify> {
        let wake = Arc::new(Notify::new());
        let (w, config, tls) = (wake.clone(), self.config.clone(), self.tls.clone());
        if let Some(_in) = self.runner.enter() {
            tokio::spawn(async move {
                loop {
                    let listened = match &tls {
                        Some(tls) => listen(&config, tls.clone(), &w, every).await,
                        None => listen(&config, tokio_postgres::NoTls, &w, every).await,
                    };
                    if let Err(error) = listened {
                        tracing::warn!(%error, "records database: listening for commits");
                    }
                    // Whatever was missed meanwhile is read on the next wake.
                    w.notify_one();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        wake
    }
}

/// Listens until the connection fails.
async fn listen<T>(
    config: &tokio_postgres::Config,
    tls: T,
    wake: &Notify,
    every: Duration,
) -> Result<(), tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut conn) = config.connect(tls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection delivers notifications only while it is polled.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                    let _ = tx.send(Ok(()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = tx.send(Err(e));
                    return;
                }
                None => return,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    let mut tick = tokio::time::interval(every);
    let out = loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(Ok(())) => wake.notify_one(),
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            },
            _ = tick.tick() => wake.notify_one(),
        }
    };
    driver.abort();
    out
}
