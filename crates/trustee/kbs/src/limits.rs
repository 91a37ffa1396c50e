//! Bounds under load: a cap on open connections (each holds a permit for
//! its lifetime; one over the cap is closed at once), and a per-client
//! rate on the unauthenticated routes that make the trustee work
//! (`auth`, `attest`, the TPM enrollment) so that one client cannot take
//! the evidence verifiers from everyone else.

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Sets `TCP_NODELAY` and takes a connection permit, and one of the
/// client address's own (so one client cannot hold them all); without
/// either the connection is closed (the client sees it end before any
/// response).
#[derive(Clone)]
pub struct LimitAcceptor {
    permits: Arc<Semaphore>,
    refused: Arc<AtomicU64>,
    per_client: usize,
    loopback: bool,
    clients: Arc<parking_lot::Mutex<HashMap<IpAddr, usize>>>,
}

impl LimitAcceptor {
    /// `max` connections in all, `per_client` per client address (IPv6 by
    /// its /64; loopback exempt unless `loopback`; 0: no per-client cap).
    pub fn new(max: usize, per_client: usize, loopback: bool) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            refused: Arc::new(AtomicU64::new(0)),
            per_client,
            loopback,
            clients: Default::default(),
        }
    }

    /// Closes a connection over a limit (logged at the 1st, 2nd, 4th, ...).
    fn refuse<S>(&self, why: &'static str) -> std::future::Ready<std::io::Result<(Limited, S)>> {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(refused = n, "{why}: closing new connections");
        }
        std::future::ready(Err(std::io::Error::other(why)))
    }

    /// A slot of `ip`'s own, if it has one left.
    fn client_slot(&self, ip: IpAddr) -> Option<Option<ClientSlot>> {
        if self.per_client == 0 || (ip.is_loopback() && !self.loopback) {
            return Some(None);
        }
        let key = client_key(ip);
        let mut c = self.clients.lock();
        let n = c.entry(key).or_insert(0);
        if *n >= self.per_client {
            return None;
        }
        *n += 1;
        Some(Some(ClientSlot {
            key,
            clients: self.clients.clone(),
        }))
    }
}

impl<S: Send + 'static> axum_server::accept::Accept<TcpStream, S> for LimitAcceptor {
    type Stream = Limited;
    type Service = S;
    type Future = std::future::Ready<std::io::Result<(Limited, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let slot = match stream.peer_addr() {
            Ok(peer) => self.client_slot(peer.ip()),
            Err(_) => Some(None),
        };
        let Some(slot) = slot else {
            return self.refuse("a client reached its connection limit");
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return self.refuse("the connection limit is reached");
        };
        std::future::ready(stream.set_nodelay(true).map(|()| {
            (
                Limited {
                    inner: stream,
                    _permit: permit,
                    _slot: slot,
                },
                service,
            )
        }))
    }
}

/// A connection holding its permits until it closes.
pub struct Limited {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    _slot: Option<ClientSlot>,
}

/// One of a client's connections; given back when dropped.
struct ClientSlot {
    key: IpAddr,
    clients: Arc<parking_lot::Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut c = self.clients.lock();
        if let Some(n) = c.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.key);
            }
        }
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Raises the open-file limit to its hard maximum; returns the limit now
/// in force.
pub fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// Raises the open-file limit and returns how many connections fit in it
/// (leaving room for the database and the rest).
pub fn connection_budget(wanted: usize) -> usize {
    let fit = (raise_open_files() as usize).saturating_sub(128).max(16);
    if fit < wanted {
        tracing::warn!(
            wanted,
            fit,
            "the open-file limit allows fewer connections than --max-connections"
        );
    }
    wanted.min(fit)
}

/// A token bucket per client address.
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    loopback: bool,
    buckets: parking_lot::Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Clients remembered at most (the oldest-refilled are dropped past it).
const MAX_CLIENTS: usize = 65_536;

impl RateLimiter {
    /// `per_sec` requests per second per client with bursts of `burst`;
    /// loopback clients (a local proxy, the operator) are exempt unless
    /// `loopback`. A rate of 0 turns the limit off.
    pub fn new(per_sec: f64, burst: f64, loopback: bool) -> Self {
        Self {
            per_sec,
            burst: burst.max(1.0),
            loopback,
            buckets: Default::default(),
        }
    }

    /// Whether `ip` may make a request now; else the seconds until it may.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), f64> {
        if self.per_sec <= 0.0 || (ip.is_loopback() && !self.loopback) {
            return Ok(());
        }
        let mut b = self.buckets.lock();
        if b.len() >= MAX_CLIENTS && !b.contains_key(&ip) {
            // Forget clients whose buckets are full again (idle ones).
            let (per_sec, burst) = (self.per_sec, self.burst);
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst
            });
            if b.len() >= MAX_CLIENTS {
                b.clear();
            }
        }
        let (tokens, at) = b.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / self.per_sec)
        }
    }
}

/// The address a client is counted by: IPv4 as is (also when mapped into
/// IPv6), IPv6 by its /64 (one host usually holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None if v6.is_loopback() => ip,
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// The requests whose work a client can cause before it is known: every
/// write (the guest's `auth`, `attest` and TPM enrollment, and admin
/// writes, which are decided and audited before their key is checked).
/// Reads (resource fetches, which a token authorizes) are not limited.
fn limited(method: &axum::http::Method) -> bool {
    !matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD)
}

/// Middleware: 429 with `Retry-After` for a client over its rate of
/// writes.
pub async fn rate_limit(
    State(limiter): State<Arc<RateLimiter>>,
    req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| client_key(c.0.ip()));
    if let Some(ip) = peer
        && limited(req.method())
        && let Err(wait) = limiter.check(ip, Instant::now())
    {
        let secs = wait.ceil().max(1.0) as u64;
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(serde_json::json!({
                "type": "https://github.com/confidential-containers/kbs/errors/TooManyRequests",
                "detail": format!("too many unauthenticated requests from {ip}: retry in {secs} s"),
            })),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    next.run(req).await
}

/// Reads the body of a POST, PUT or PATCH within the deadline of its
/// headers, then hands the request on with the body in memory (those
/// routes read it whole anyway). A client that sends a body this slowly
/// holds a connection and a task for nothing: 408, and over HTTP/1 the
/// connection is closed (HTTP/2 ends the stream). A body over
/// [`crate::api::BODY_LIMIT`] is refused as the routes would (413). Other
/// methods' routes never read a body, so theirs is not waited for.
pub async fn body_deadline(
    State(s): State<crate::api::AppState>,
    req: Request,
    next: Next,
) -> Response {
    use axum::body::HttpBody;
    use axum::http::Method;
    let reads_body = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    if !reads_body || req.body().is_end_stream() {
        return next.run(req).await;
    }
    // A body over the limit is read up to the limit before the 413, as
    // the routes' own limit did: refused before a byte is read, a client
    // still sending sees its connection reset instead of the answer.
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, crate::api::BODY_LIMIT);
    let limit = s.body_timeout;
    match tokio::time::timeout(limit, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => {
            // `to_bytes` reports its own limit as a length-limit error
            // somewhere in the source chain.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if s.is::<http_body_util::LengthLimitError>() {
                    return crate::error::KbsError::BodyTooLarge(crate::api::BODY_LIMIT)
                        .into_response();
                }
                source = s.source();
            }
            crate::error::KbsError::BadRequest(format!("reading the body: {e}")).into_response()
        }
        Err(_) => {
            let mut r = crate::error::KbsError::BodyTimeout(limit.as_secs()).into_response();
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_client_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let l = RateLimiter::new(10.0, 5.0, false);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t = Instant::now();
        for _ in 0..5 {
            l.check(a, t).unwrap();
        }
        let wait = l.check(a, t).unwrap_err();
        assert!((wait - 0.1).abs() < 1e-9, "{wait}");
        l.check(b, t).unwrap();
        // A tenth of a second later, one more.
        l.check(a, t + Duration::from_millis(100)).unwrap();
        assert!(l.check(a, t + Duration::from_millis(100)).is_err());
        // Loopback is exempt unless asked.
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..100 {
            l.check(lo, t).unwrap();
        }
        let strict = RateLimiter::new(10.0, 5.0, true);
        assert!((0..6).map(|_| strict.check(lo, t)).any(|r| r.is_err()));
        // Off.
        let off = RateLimiter::new(0.0, 5.0, true);
        assert!((0..1000).all(|_| off.check(a, t).is_ok()));
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(
            client_key(a),
            client_key("2001:db8:1:3::1".parse().unwrap())
        );
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        assert!(client_key("::ffff:127.0.0.1".parse().unwrap()).is_loopback());
        assert!(client_key("::1".parse().unwrap()).is_loopback());
    }

    #[test]
    fn the_client_table_stays_bounded() {
        let l = RateLimiter::new(1.0, 2.0, false);
        let t = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.check(ip, t);
        }
        assert!(l.buckets.lock().len() <= MAX_CLIENTS);
    }
}
