//! A TCP relay on a loopback port of its own, in front of a control plane:
//! several relays give one control plane several addresses, and killing one
//! is a replica's address going dead (listener closed, its connections
//! cut) while the control plane behind it lives on.

use std::io::ErrorKind;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

pub struct Relay {
    addr: String,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    open: Arc<AtomicUsize>,
    accept: Option<JoinHandle<()>>,
}

impl Relay {
    /// Forwards connections to `to` (`HOST:PORT`).
    pub fn start(to: &str) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let open: Arc<AtomicUsize> = Arc::default();
        let (s, c, o, to) = (stop.clone(), conns.clone(), open.clone(), to.to_string());
        let accept = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || accept_loop(&listener, &to, &s, &c, &o))
            .context("starting the relay thread")?;
        Ok(Relay {
            addr,
            stop,
            conns,
            open,
            accept: Some(accept),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Connections open through it now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Closes the port and cuts every connection through it.
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for s in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

fn accept_loop(
    listener: &TcpListener,
    to: &str,
    stop: &AtomicBool,
    conns: &Mutex<Vec<TcpStream>>,
    open: &Arc<AtomicUsize>,
) {
    while !stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => continue,
        };
        let Ok(server) = TcpStream::connect(to) else {
            continue;
        };
        let pair = (|| {
            client.set_nonblocking(false)?;
            let up = (client.try_clone()?, server.try_clone()?);
            let down = (server.try_clone()?, client.try_clone()?);
            let mut held = conns.lock().unwrap_or_else(|p| p.into_inner());
            held.push(client);
            held.push(server);
            Ok::<_, std::io::Error>((up, down))
        })();
        let Ok((up, down)) = pair else { continue };
        open.fetch_add(1, Ordering::SeqCst);
        // Either side ending ends the connection, counted once.
        let ended = Arc::new(AtomicBool::new(false));
        for (mut from, mut into) in [up, down] {
            let (ended, open) = (ended.clone(), open.clone());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut into);
                let _ = into.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                if !ended.swap(true, Ordering::SeqCst) {
                    open.fetch_sub(1, Ordering::SeqCst);
                }
            });
        }
    }
}
