//! A real HTTP receiver on loopback for the alert tests: it keeps every
//! POST (path and JSON body) and answers 200, or 202 on PagerDuty's path
//! as PagerDuty does. It can go down (its port closed, open connections
//! cut) and come back on the same port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;
use tokio::sync::watch;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Got {
    pub path: String,
    pub body: Value,
}

pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    rt: tokio::runtime::Runtime,
    stop: Option<watch::Sender<bool>>,
}

impl Receiver {
    pub fn start() -> Result<Receiver> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let mut r = Receiver {
            addr,
            got: Default::default(),
            rt,
            stop: None,
        };
        r.serve(listener);
        Ok(r)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (stop, mut stopped) = watch::channel(false);
        self.stop = Some(stop);
        let got = self.got.clone();
        self.rt.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    a = listener.accept() => {
                        let Ok((stream, _)) = a else { continue };
                        let got = got.clone();
                        conns.spawn(async move {
                            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                                let got = got.clone();
                                async move {
                                    let path = req.uri().path().to_string();
                                    let bytes = match req.into_body().collect().await {
                                        Ok(b) => b.to_bytes(),
                                        Err(_) => Bytes::new(),
                                    };
                                    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                                    let code = if path.starts_with("/pd") { 202 } else { 200 };
                                    if let Ok(mut g) = got.lock() {
                                        g.push(Got { path, body });
                                    }
                                    hyper::Response::builder()
                                        .status(code)
                                        .body(Full::new(Bytes::from_static(b"{}")))
                                }
                            });
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .await;
                        });
                    }
                }
            }
            // Down: the port closes and open connections are cut.
            conns.abort_all();
        });
    }

    /// Closes the port and every open connection.
    pub fn down(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    /// Listens again on the same port.
    pub fn up(&mut self) -> Result<()> {
        let addr = self.addr;
        let listener = crate::wait_for("the receiver's port", Duration::from_secs(10), || {
            self.rt.block_on(tokio::net::TcpListener::bind(addr)).ok()
        })?;
        self.serve(listener);
        Ok(())
    }

    /// Every request received on paths starting with `prefix`, in order.
    pub fn got(&self, prefix: &str) -> Vec<Value> {
        self.got
            .lock()
            .map(|g| {
                g.iter()
                    .filter(|x| x.path.starts_with(prefix))
                    .map(|x| x.body.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits for a request on `prefix` that `pred` accepts; returns it.
    pub fn wait(
        &self,
        prefix: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        crate::wait_for(&format!("a request on {prefix}"), limit, || {
            self.got(prefix).into_iter().find(|b| pred(b))
        })
        .with_context(|| {
            let all = self.got("");
            anyhow!("received so far: {all:?}")
        })
    }
}
