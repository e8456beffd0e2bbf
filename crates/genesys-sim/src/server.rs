//! The listener, per-connection serving (with the ability to reset a connection from inside a
//! handler), and the handle a test holds.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Response};
use http_body::{Frame, SizeHint};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::SimConfig;
use crate::conn::ConnCtl;
use crate::data::lock;
use crate::error::{Resp, SimError};
use crate::faults::{BodyFault, DRIP_EVERY};
use crate::routes::handle;
use crate::state::{LedgerEntry, Shared, Stats};

/// Starts simulators. See [`Simulator::spawn`].
#[derive(Debug, Clone, Copy)]
pub struct Simulator;

impl Simulator {
    /// Binds `config.addr` (default `127.0.0.1:0`), starts serving on the current tokio runtime
    /// and returns at once with a handle. OAuth, API and `/sim/*` share the address.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), genesys_sim::SimError> {
    /// use genesys_sim::{SimConfig, Simulator};
    ///
    /// let sim = Simulator::spawn(SimConfig::default().users(5)).await?;
    /// assert!(sim.base_url().starts_with("http://127.0.0.1:"));
    /// assert_eq!(sim.user_ids().len(), 5);
    /// sim.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn spawn(config: SimConfig) -> Result<SimHandle, SimError> {
        let revoke_every = config.faults.revoke_every;
        let shared = Arc::new(Shared::new(config, crate::routes::names())?);
        let listener = TcpListener::bind(shared.cfg.addr)
            .await
            .map_err(SimError::Bind)?;
        let addr = listener.local_addr().map_err(SimError::Bind)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        if let Some(every) = revoke_every {
            let sh = shared.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                // `every` is at most faults::MAX_DURATION (checked by the configuration).
                let now = tokio::time::Instant::now();
                let start = now.checked_add(every).unwrap_or(now);
                let mut tick = tokio::time::interval_at(start, every);
                // Ticks missed while the machine was busy are not made up back to back.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            sh.tokens.revoke_all();
                            sh.stats.fault("revoke");
                        }
                        _ = stop.changed() => break,
                    }
                }
            });
        }
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
        tracing::debug!(%addr, "genesys-sim listening");
        Ok(SimHandle {
            addr,
            shared,
            stop: stop_tx,
            task: Some(task),
        })
    }
}

/// How long a connection may take to send a request's head, idle time before it included.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause after a failed `accept`.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors, say: the error comes back at once until a
                    // connection closes, so wait a little rather than spin on it.
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                conns.spawn(serve(stream, shared.clone(), stop.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    conns.shutdown().await;
}

async fn serve(stream: TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let ctl = Arc::new(ConnCtl::default());
    let svc_ctl = ctl.clone();
    let svc = service_fn(move |req| {
        let sh = shared.clone();
        let ctl = svc_ctl.clone();
        async move { Ok::<_, Infallible>(SimBody::respond(handle(sh, ctl, req).await)) }
    });
    let mut conn = http1::Builder::new()
        .keep_alive(true)
        // As a real server does: a client that does not send a whole request head in time
        // (one that sends part of it and stops, or sits idle on a kept-alive connection) is
        // disconnected, so that such connections do not pile up.
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = &mut conn => {}
        _ = ctl.kill.notified() => {
            // SO_LINGER 0: closing sends RST, so the client sees a reset, never a response.
            let parts = conn.into_parts();
            let _ = parts.io.inner().set_zero_linger();
        }
        _ = stop.changed() => {}
    }
}

/// The body the server sends: the answer as built, or (under a `*-body` fault) a body that
/// never ends, stalls or drips.
pub(crate) enum SimBody {
    Full(Option<Bytes>),
    /// The answer, then spaces forever (valid JSON that never ends).
    Endless(Option<Bytes>),
    /// The first half; then pending forever.
    Stall(Option<Bytes>),
    /// One byte each `DRIP_EVERY`.
    Drip {
        rest: Bytes,
        sleep: Pin<Box<tokio::time::Sleep>>,
    },
}

/// Bytes of each chunk of an endless body.
const ENDLESS_CHUNK: usize = 16 * 1024;

impl SimBody {
    fn respond(resp: Resp) -> Response<SimBody> {
        let (mut parts, body) = resp.into_parts();
        let bytes = body.into_inner().unwrap_or_default();
        let body = match parts.extensions.remove::<BodyFault>() {
            None => SimBody::Full(Some(bytes)),
            Some(BodyFault::Endless) => {
                parts.headers.remove(CONTENT_LENGTH);
                SimBody::Endless(Some(bytes))
            }
            Some(BodyFault::Huge) => {
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(1_000_000_000_000u64));
                SimBody::Endless(Some(bytes))
            }
            Some(BodyFault::Stall) => {
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                SimBody::Stall(Some(bytes.slice(..bytes.len() / 2)))
            }
            Some(BodyFault::Drip) => {
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                SimBody::Drip {
                    rest: bytes,
                    sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
                }
            }
        };
        Response::from_parts(parts, body)
    }
}

impl http_body::Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let data = match this {
            SimBody::Full(bytes) => bytes.take(),
            SimBody::Endless(first) => Some(
                first
                    .take()
                    .unwrap_or_else(|| Bytes::from_static(&[b' '; ENDLESS_CHUNK])),
            ),
            SimBody::Stall(first) => match first.take() {
                Some(b) => Some(b),
                None => return Poll::Pending,
            },
            SimBody::Drip { rest, sleep } => {
                if rest.is_empty() {
                    None
                } else {
                    ready!(sleep.as_mut().poll(cx));
                    let deadline = sleep.deadline() + DRIP_EVERY;
                    sleep.as_mut().reset(deadline);
                    Some(rest.split_to(1))
                }
            }
        };
        Poll::Ready(data.map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(bytes) => bytes.is_none(),
            SimBody::Drip { rest, .. } => rest.is_empty(),
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            SimBody::Full(None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// A running simulator. Dropping it stops the simulator too (without waiting).
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`: the base URL of both the OAuth and the API routes.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SimConfig {
        &self.shared.cfg
    }

    /// Every applied side effect so far, in order.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        lock(&self.shared.ledger).clone()
    }

    /// Number of ledger entries.
    pub fn ledger_len(&self) -> usize {
        lock(&self.shared.ledger).len()
    }

    /// How many effects were applied to this entity (user id, action id, integration id or
    /// ingested record key).
    pub fn ledger_count_for(&self, entity: &str) -> usize {
        lock(&self.shared.ledger)
            .iter()
            .filter(|e| e.entity == entity)
            .count()
    }

    /// The effects applied to this entity, in order.
    pub fn ledger_for(&self, entity: &str) -> Vec<LedgerEntry> {
        lock(&self.shared.ledger)
            .iter()
            .filter(|e| e.entity == entity)
            .cloned()
            .collect()
    }

    /// Request statistics so far.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// A user's current state as the API would return it, or `None` for an unknown id.
    pub fn user(&self, id: &str) -> Option<Value> {
        let cell = self.shared.users.get(id)?;
        serde_json::to_value(&*lock(cell)).ok()
    }

    /// The seeded users' ids, in index order (also [`crate::user_id`]`(seed, i)`).
    pub fn user_ids(&self) -> Vec<String> {
        self.shared
            .users
            .list
            .iter()
            .map(|u| lock(u).id.clone())
            .collect()
    }

    /// The seeded integrations' ids (also [`crate::integration_id`]`(seed, i)`).
    pub fn integration_ids(&self) -> Vec<String> {
        self.shared.integration_ids.clone()
    }

    /// An integration's current config, or `None` for an unknown id.
    pub fn integration_config(&self, id: &str) -> Option<Value> {
        let cell = self.shared.integrations.get(id)?;
        Some(Value::Object(lock(cell).clone()))
    }

    /// Revokes every issued token now: the next API call with any of them gets 401.
    /// Returns how many tokens were live.
    pub fn revoke_tokens(&self) -> usize {
        self.shared.tokens.revoke_all()
    }

    /// Takes the login host down (`true`) or brings it back (`false`): while it is down, every
    /// `POST /oauth/token` is answered 503 `temporarily_unavailable` (counted as the fault
    /// `login-down`), as during an outage of the real one. Tokens already issued still work.
    pub fn set_login_down(&self, down: bool) {
        self.shared
            .login_down
            .store(down, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops accepting, closes every connection and waits until the listener is gone.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
