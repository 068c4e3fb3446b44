//! Admission on the gRPC port: TCP accept, the TLS handshake under a
//! timeout, and a cap on connections that have not presented a client
//! certificate, in all and per source address.
//!
//! Why: anyone who can reach the port can open connections without a
//! certificate (enrollment needs that), so without bounds a few thousand
//! idle sockets exhaust the control plane's descriptors and lock agents
//! out. A connection holds a slot of the gate from accept until it has
//! presented a client certificate; one that never does (it may only
//! enroll) keeps its slot until it closes, and is closed
//! `unauthenticated_lifetime` after its handshake. A connection over
//! either cap is closed at accept, before any TLS work. Authenticated
//! connections (agents, users) hold no slot, so a flood from one address
//! leaves agents elsewhere unaffected.
//!
//! The handshake runs here, not in tonic, so that these bounds apply to
//! it; the stream handed to tonic is the rustls one, so `peer_certs()`
//! works as before.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use picket_config::control::Limits;

/// The counts of connections without a certificate, and what the gate
/// refused; exported on `/metrics`.
#[derive(Default)]
pub struct Gate {
    held: Mutex<Held>,
    /// Closed at accept: over the cap in all.
    pub refused_total: AtomicU64,
    /// Closed at accept: over the cap for their address.
    pub refused_address: AtomicU64,
    /// Closed because the handshake did not finish in time.
    pub handshake_timeouts: AtomicU64,
    /// Handshakes that failed (bad certificate, not TLS, reset).
    pub handshake_failures: AtomicU64,
    /// Connections without a certificate closed at the end of their
    /// lifetime.
    pub unauthenticated_expired: AtomicU64,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Gate {
    /// Connections now open without a client certificate.
    pub fn unauthenticated(&self) -> usize {
        lock(&self.held).total
    }

    /// Takes a slot for a connection from `ip`, or says which cap it is
    /// over.
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Result<Slot, Refusal> {
        let mut held = lock(&self.held);
        if held.total >= limits.max_unauthenticated {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Total);
        }
        let n = held.by_address.entry(ip).or_insert(0);
        if *n >= limits.max_unauthenticated_per_address {
            self.refused_address.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Address);
        }
        *n += 1;
        held.total += 1;
        Ok(Slot {
            gate: self.clone(),
            ip,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Total,
    Address,
}

/// One connection's place among those without a certificate; given back
/// when dropped.
struct Slot {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = lock(&self.gate.held);
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.by_address.remove(&self.ip);
            }
        }
    }
}

/// A connection after its handshake, as tonic serves it. One without a
/// client certificate carries its slot and a deadline after which reads
/// end (tonic then closes it).
pub struct Conn {
    io: TlsStream<TcpStream>,
    unauthenticated: Option<(Slot, Pin<Box<tokio::time::Sleep>>)>,
}

impl Connected for Conn {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some((slot, deadline)) = &mut self.unauthenticated
            && deadline.as_mut().poll(cx).is_ready()
        {
            slot.gate
                .unauthenticated_expired
                .fetch_add(1, Ordering::Relaxed);
            self.unauthenticated = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection without a client certificate outlived its lifetime",
            )));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts on `listener` until `shutdown`, and yields each connection
/// whose handshake finished, as tonic's incoming stream.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: Limits,
    gate: Arc<Gate>,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, limits, gate, tx, shutdown));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: Limits,
    gate: Arc<Gate>,
    tx: mpsc::Sender<io::Result<Conn>>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, or a connection reset before
                    // accept: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match gate.admit(peer.ip(), &limits) {
            Ok(s) => s,
            Err(why) => {
                refused(peer, why);
                drop(tcp);
                continue;
            }
        };
        // No Nagle: a small frame (an Ack, a flow-control window update)
        // otherwise waits out the peer's delayed ACK, 40 ms, and the
        // agent's stream stalls behind it.
        let _ = tcp.set_nodelay(true);
        let (acceptor, gate, tx) = (acceptor.clone(), gate.clone(), tx.clone());
        let (timeout, lifetime) = (limits.handshake_timeout, limits.unauthenticated_lifetime);
        tokio::spawn(async move {
            let io = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    gate.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    gate.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let has_cert = io
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let unauthenticated = if has_cert {
                drop(slot);
                None
            } else {
                Some((slot, Box::pin(tokio::time::sleep(lifetime))))
            };
            let _ = tx
                .send(Ok(Conn {
                    io,
                    unauthenticated,
                }))
                .await;
        });
    }
}

/// Logs a refusal at most once a second per kind, so a flood does not
/// flood the log too (the counters have every one).
fn refused(peer: SocketAddr, why: Refusal) {
    static LAST: Mutex<[Option<std::time::Instant>; 2]> = Mutex::new([None, None]);
    let i = usize::from(why == Refusal::Address);
    let mut last = lock(&LAST);
    let now = std::time::Instant::now();
    if last[i].is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
        last[i] = Some(now);
        match why {
            Refusal::Total => tracing::warn!(
                %peer,
                "connection refused: too many connections without a client certificate"
            ),
            Refusal::Address => tracing::warn!(
                %peer,
                "connection refused: too many connections without a client certificate \
                 from this address"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_in_all_and_per_address_and_given_back() {
        let gate = Arc::new(Gate::default());
        let limits = Limits {
            max_unauthenticated: 3,
            max_unauthenticated_per_address: 2,
            ..Limits::default()
        };
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = gate.admit(a, &limits).unwrap();
        let _a2 = gate.admit(a, &limits).unwrap();
        assert_eq!(gate.admit(a, &limits).err(), Some(Refusal::Address));
        let b1 = gate.admit(b, &limits).unwrap();
        assert_eq!(gate.admit(b, &limits).err(), Some(Refusal::Total));
        assert_eq!(gate.unauthenticated(), 3);
        drop(a1);
        drop(b1);
        assert_eq!(gate.unauthenticated(), 1);
        let _a3 = gate.admit(a, &limits).unwrap();
        assert_eq!(gate.refused_total.load(Ordering::Relaxed), 1);
        assert_eq!(gate.refused_address.load(Ordering::Relaxed), 1);
        assert_eq!(lock(&gate.held).by_address.len(), 1);
    }
}
