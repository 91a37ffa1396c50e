//! Bounds under load: a cap on open connections (each holds a permit for
//! its lifetime; one over the cap is closed at once), and a per-client
//! rate on the unauthenticated routes that make the trustee work
//! (`auth`, `attest`, the TPM enrollment) so that one client cannot take
//! the evidence verifiers from everyone else.
//!
//! Behind a TCP load balancer every connection comes from the balancer's
//! address. Connections from the addresses given as trusted proxies must
//! begin with a PROXY protocol header (v1 or v2, as HAProxy, nginx and the
//! cloud balancers send it), and the client it names is the one counted.

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode, header};
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
    bad_headers: Arc<AtomicU64>,
    per_client: usize,
    loopback: bool,
    clients: Arc<parking_lot::Mutex<HashMap<IpAddr, usize>>>,
    proxies: Arc<Vec<ipnet::IpNet>>,
}

/// How long a trusted proxy has to send its PROXY protocol header.
const PROXY_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest PROXY protocol v2 header accepted (its TLVs included).
pub const MAX_PROXY_V2: usize = 4096;
/// The 12 bytes a PROXY protocol v2 header starts with.
const PROXY_V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest PROXY protocol v1 line, CRLF included (its specification).
pub const MAX_PROXY_V1: usize = 107;

/// The client a request comes from: the TCP peer, or the client a trusted
/// proxy named in its PROXY protocol header (`named`). A named client is
/// never exempt as loopback: whoever is in a trusted network can name
/// any address.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr {
    pub ip: IpAddr,
    pub named: bool,
}

impl LimitAcceptor {
    /// `max` connections in all, `per_client` per client address (IPv6 by
    /// its /64; loopback exempt unless `loopback`; 0: no per-client cap).
    /// Connections from `proxies` must start with a PROXY protocol header;
    /// the client it names is counted instead of the proxy.
    pub fn new(max: usize, per_client: usize, loopback: bool, proxies: Vec<ipnet::IpNet>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            refused: Arc::new(AtomicU64::new(0)),
            bad_headers: Arc::new(AtomicU64::new(0)),
            per_client,
            loopback,
            clients: Default::default(),
            proxies: Arc::new(proxies),
        }
    }

    /// Closes a connection over a limit (logged at the 1st, 2nd, 4th, ...).
    fn refuse(&self, why: &str) -> std::io::Error {
        Self::refuse_counted(&self.refused, why)
    }

    /// Closes a trusted proxy's connection without a valid header (counted
    /// apart from the limits, so that neither hides the other's warning).
    fn refuse_header(&self, why: &str) -> std::io::Error {
        Self::refuse_counted(&self.bad_headers, why)
    }

    fn refuse_counted(counter: &AtomicU64, why: &str) -> std::io::Error {
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(refused = n, "{why}: closing such connections");
        }
        std::io::Error::other(why.to_string())
    }

    /// Whether `ip` is a trusted proxy's address.
    fn is_proxy(&self, ip: IpAddr) -> bool {
        let v4 = client_key_v4(ip);
        self.proxies
            .iter()
            .any(|n| n.contains(&v4) || n.contains(&ip))
    }

    /// A slot of `ip`'s own, if it has one left; a loopback peer (not a
    /// named client) is exempt unless `loopback`.
    fn client_slot(&self, ip: IpAddr, named: bool) -> Option<Option<ClientSlot>> {
        let key = client_key(ip);
        if self.per_client == 0 || (!named && key.is_loopback() && !self.loopback) {
            return Some(None);
        }
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
    type Service = WithClient<S>;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<(Limited, WithClient<S>)>> + Send>>;

    fn accept(&self, mut stream: TcpStream, service: S) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // The global cap first: a proxy's header is not waited for
            // on a connection that would be closed anyway.
            let Ok(permit) = this.permits.clone().try_acquire_owned() else {
                return Err(this.refuse("the connection limit is reached"));
            };
            let peer = stream.peer_addr().ok().map(|p| p.ip());
            let client = match peer {
                Some(ip) if this.is_proxy(ip) => {
                    // While its header is awaited, the connection counts
                    // as the proxy's own: one host in a trusted network
                    // cannot hold every permit by sending nothing.
                    let Some(waiting) = this.client_slot(ip, false) else {
                        return Err(this.refuse(
                            "a trusted proxy reached its limit of connections awaiting their header",
                        ));
                    };
                    let header =
                        tokio::time::timeout(PROXY_HEADER_TIMEOUT, read_proxy_header(&mut stream))
                            .await;
                    drop(waiting);
                    match header {
                        Ok(Ok(Some(named))) => Some(ClientAddr {
                            ip: named,
                            named: true,
                        }),
                        Ok(Ok(None)) => Some(ClientAddr { ip, named: false }),
                        Ok(Err(e)) => {
                            return Err(this.refuse_header(&format!(
                                "a trusted proxy ({ip}) sent no valid PROXY protocol header: {e}"
                            )));
                        }
                        Err(_) => {
                            return Err(this.refuse_header(&format!(
                                "a trusted proxy ({ip}) sent no PROXY protocol header within {PROXY_HEADER_TIMEOUT:?}"
                            )));
                        }
                    }
                }
                other => other.map(|ip| ClientAddr { ip, named: false }),
            };
            let slot = match client {
                Some(c) => this.client_slot(c.ip, c.named),
                None => Some(None),
            };
            let Some(slot) = slot else {
                return Err(this.refuse("a client reached its connection limit"));
            };
            stream.set_nodelay(true)?;
            Ok((
                Limited {
                    inner: stream,
                    _permit: permit,
                    _slot: slot,
                },
                WithClient {
                    inner: service,
                    client,
                },
            ))
        })
    }
}

/// A connection's service, telling each request who its client is.
#[derive(Clone)]
pub struct WithClient<S> {
    inner: S,
    client: Option<ClientAddr>,
}

impl<S, B> tower_service::Service<axum::http::Request<B>> for WithClient<S>
where
    S: tower_service::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        if let Some(c) = self.client {
            req.extensions_mut().insert(c);
        }
        self.inner.call(req)
    }
}

/// Reads a PROXY protocol header (v1 or v2) from the start of `stream`,
/// consuming exactly its bytes; the client it names, or `None` for a
/// connection the proxy made on its own behalf (v2 `LOCAL`, v1
/// `UNKNOWN`, or no IP addresses).
pub async fn read_proxy_header<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Option<IpAddr>, String> {
    use tokio::io::AsyncReadExt;
    let io = |e: std::io::Error| format!("reading it: {e}");
    // Both versions are longer than 12 bytes, so these are the header's.
    let mut buf = vec![0u8; 12];
    stream.read_exact(&mut buf).await.map_err(io)?;
    if buf.as_slice() == PROXY_V2_SIGNATURE {
        buf.resize(16, 0);
        stream.read_exact(&mut buf[12..]).await.map_err(io)?;
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if 16 + len > MAX_PROXY_V2 {
            return Err(format!(
                "a v2 header of {} bytes (at most {MAX_PROXY_V2})",
                16 + len
            ));
        }
        buf.resize(16 + len, 0);
        stream.read_exact(&mut buf[16..]).await.map_err(io)?;
    } else if buf.starts_with(b"PROXY ") {
        // One byte at a time: what follows the line belongs to TLS/HTTP.
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= MAX_PROXY_V1 {
                return Err(format!("a v1 line longer than {MAX_PROXY_V1} bytes"));
            }
            let mut b = [0u8; 1];
            stream.read_exact(&mut b).await.map_err(io)?;
            buf.push(b[0]);
        }
    } else {
        return Err("the connection does not start with one".into());
    }
    proxy_client(&buf)
}

/// The client a complete PROXY protocol header names (see
/// [`read_proxy_header`]).
pub fn proxy_client(header: &[u8]) -> Result<Option<IpAddr>, String> {
    use ppp::{HeaderResult, v1, v2};
    match HeaderResult::parse(header) {
        HeaderResult::V2(Ok(h)) if h.header.len() == header.len() => Ok(match h.command {
            v2::Command::Local => None,
            v2::Command::Proxy => match h.addresses {
                v2::Addresses::IPv4(a) => Some(IpAddr::V4(a.source_address)),
                v2::Addresses::IPv6(a) => Some(IpAddr::V6(a.source_address)),
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
            },
        }),
        HeaderResult::V1(Ok(h)) if h.header.len() == header.len() => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Some(IpAddr::V4(a.source_address)),
            v1::Addresses::Tcp6(a) => Some(IpAddr::V6(a.source_address)),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(_)) | HeaderResult::V1(Ok(_)) => {
            Err("the header's length does not match its content".into())
        }
        HeaderResult::V2(Err(e)) => Err(format!("v2: {e}")),
        HeaderResult::V1(Err(e)) => Err(format!("v1: {e}")),
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
    /// A client a trusted proxy named (`named`) is never exempt as loopback.
    pub fn check(&self, ip: IpAddr, named: bool, now: Instant) -> Result<(), f64> {
        if self.per_sec <= 0.0 || (!named && ip.is_loopback() && !self.loopback) {
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

/// IPv4 mapped into IPv6 as IPv4, other addresses as they are.
fn client_key_v4(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address a client is counted by: IPv4 as is (also when mapped into
/// IPv6), IPv6 by its /64 (one host usually holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match client_key_v4(ip) {
        IpAddr::V6(v6) if !v6.is_loopback() => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        other => other,
    }
}

/// The requests whose work a client can cause before it is known: every
/// write (the guest's `auth`, `attest` and TPM enrollment, and admin
/// writes, which are decided and audited before their key is checked).
/// Reads (resource fetches, which a token authorizes) are not limited.
fn limited(method: &axum::http::Method) -> bool {
    !matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD)
}

/// A 429 with `Retry-After` when the request's client is over its rate
/// of writes.
pub fn over_rate(limiter: &RateLimiter, req: &Request) -> Option<Response> {
    let peer = match req.extensions().get::<ClientAddr>() {
        Some(c) => Some((client_key(c.ip), c.named)),
        None => req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| (client_key(c.0.ip()), false)),
    };
    let (ip, named) = peer?;
    if !limited(req.method()) {
        return None;
    }
    let wait = limiter.check(ip, named, Instant::now()).err()?;
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
    Some(resp)
}

/// Reads the body of a POST, PUT or PATCH within the deadline of its
/// headers and gives the request back with the body in memory (those
/// routes read it whole anyway). A client that sends a body this slowly
/// holds a connection and a task for nothing: 408, and over HTTP/1 the
/// connection is closed (HTTP/2 ends the stream). A body over
/// [`crate::api::BODY_LIMIT`] is refused as the routes would (413). Other
/// methods' routes never read a body, so theirs is not waited for.
pub async fn body_in_time(s: &crate::api::AppState, req: Request) -> Result<Request, Response> {
    use axum::body::HttpBody;
    use axum::http::Method;
    let reads_body = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    if !reads_body || req.body().is_end_stream() {
        return Ok(req);
    }
    // A body over the limit is read up to the limit before the 413, as
    // the routes' own limit did: refused before a byte is read, a client
    // still sending sees its connection reset instead of the answer.
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, crate::api::BODY_LIMIT);
    let limit = s.body_timeout;
    match tokio::time::timeout(limit, read).await {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, Body::from(bytes))),
        Ok(Err(e)) => {
            // `to_bytes` reports its own limit as a length-limit error
            // somewhere in the source chain.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if s.is::<http_body_util::LengthLimitError>() {
                    return Err(crate::error::KbsError::BodyTooLarge(crate::api::BODY_LIMIT)
                        .into_response());
                }
                source = s.source();
            }
            Err(
                crate::error::KbsError::BadRequest(format!("reading the body: {e}"))
                    .into_response(),
            )
        }
        Err(_) => {
            let mut r = crate::error::KbsError::BodyTimeout(limit.as_secs()).into_response();
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A PROXY protocol v2 header: `command` 0x20 (LOCAL) or 0x21 (PROXY),
    /// `family` 0x11 (TCP over IPv4), 0x21 (TCP over IPv6) or 0x00.
    fn proxy_v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = PROXY_V2_SIGNATURE.to_vec();
        h.extend([command, family]);
        h.extend((addresses.len() as u16).to_be_bytes());
        h.extend(addresses);
        h
    }

    #[test]
    fn proxy_headers_name_their_client_and_malformed_ones_are_refused() {
        let v4 = [203, 0, 113, 7, 192, 0, 2, 1, 0x1f, 0x90, 0x01, 0xbb];
        assert_eq!(
            proxy_client(&proxy_v2(0x21, 0x11, &v4)).unwrap(),
            Some("203.0.113.7".parse().unwrap())
        );
        let mut v6 = vec![0x20, 0x01, 0x0d, 0xb8];
        v6.extend([0; 11]);
        v6.push(1);
        v6.extend([0; 16]);
        v6.extend([0, 1, 0, 2]);
        assert_eq!(
            proxy_client(&proxy_v2(0x21, 0x21, &v6)).unwrap(),
            Some("2001:db8::1".parse().unwrap())
        );
        // TLVs after the addresses (as cloud balancers add) are allowed.
        let mut tlv = v4.to_vec();
        tlv.extend([0x04, 0x00, 0x02, b'h', b'i']);
        assert_eq!(
            proxy_client(&proxy_v2(0x21, 0x11, &tlv)).unwrap(),
            Some("203.0.113.7".parse().unwrap())
        );
        // The proxy on its own behalf.
        assert_eq!(proxy_client(&proxy_v2(0x20, 0x00, &[])).unwrap(), None);
        assert_eq!(proxy_client(b"PROXY UNKNOWN\r\n").unwrap(), None);
        assert_eq!(
            proxy_client(b"PROXY TCP4 198.51.100.4 192.0.2.1 51234 443\r\n").unwrap(),
            Some("198.51.100.4".parse().unwrap())
        );
        assert_eq!(
            proxy_client(b"PROXY TCP6 2001:db8::2 2001:db8::1 51234 443\r\n").unwrap(),
            Some("2001:db8::2".parse().unwrap())
        );
        for bad in [
            &b"PROXY TCP4 nonsense\r\n"[..],
            b"PROXY TCP4 198.51.100.4 192.0.2.1 51234\r\n",
            b"PROXY TCP4 2001:db8::2 192.0.2.1 1 2\r\n",
            b"PROXY TCP4 198.51.100.4 192.0.2.1 99999 443\r\n",
            b"GET / HTTP/1.1\r\n",
            &proxy_v2(0x31, 0x11, &v4),      // version 3
            &proxy_v2(0x22, 0x11, &v4),      // no such command
            &proxy_v2(0x21, 0x11, &v4[..8]), // addresses cut short
        ] {
            assert!(proxy_client(bad).is_err(), "accepted {bad:?}");
        }
        // Every prefix of a valid header is refused; a single-byte change
        // anywhere in it may or may not still parse, but never panics.
        let good = proxy_v2(0x21, 0x11, &v4);
        for n in 0..good.len() {
            assert!(proxy_client(&good[..n]).is_err(), "prefix of {n} bytes");
        }
        for i in 0..good.len() {
            for b in [0u8, 0xff, 0x7f] {
                let mut m = good.clone();
                m[i] = b;
                let _ = proxy_client(&m);
            }
        }
    }

    #[test]
    fn trusted_proxies_match_by_network_and_mapped_addresses() {
        let a = LimitAcceptor::new(
            10,
            2,
            false,
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::5/128".parse().unwrap(),
            ],
        );
        assert!(a.is_proxy("10.1.2.3".parse().unwrap()));
        assert!(a.is_proxy("::ffff:10.1.2.3".parse().unwrap()));
        assert!(a.is_proxy("2001:db8::5".parse().unwrap()));
        assert!(!a.is_proxy("2001:db8::6".parse().unwrap()));
        assert!(!a.is_proxy("11.0.0.1".parse().unwrap()));
        assert!(!LimitAcceptor::new(10, 2, false, vec![]).is_proxy("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn a_client_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let l = RateLimiter::new(10.0, 5.0, false);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t = Instant::now();
        for _ in 0..5 {
            l.check(a, false, t).unwrap();
        }
        let wait = l.check(a, false, t).unwrap_err();
        assert!((wait - 0.1).abs() < 1e-9, "{wait}");
        l.check(b, false, t).unwrap();
        // A tenth of a second later, one more.
        l.check(a, false, t + Duration::from_millis(100)).unwrap();
        assert!(l.check(a, false, t + Duration::from_millis(100)).is_err());
        // Loopback is exempt unless asked.
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..100 {
            l.check(lo, false, t).unwrap();
        }
        let strict = RateLimiter::new(10.0, 5.0, true);
        assert!(
            (0..6)
                .map(|_| strict.check(lo, false, t))
                .any(|r| r.is_err())
        );
        // Off.
        let off = RateLimiter::new(0.0, 5.0, true);
        assert!((0..1000).all(|_| off.check(a, false, t).is_ok()));
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
            let _ = l.check(ip, false, t);
        }
        assert!(l.buckets.lock().len() <= MAX_CLIENTS);
    }
}
