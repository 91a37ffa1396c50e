//! An OCI distribution client: manifests, blobs (streamed), uploads;
//! anonymous, basic and bearer-token auth (the `WWW-Authenticate`
//! challenge flow); HTTPS with the system roots plus configured CAs, plain
//! HTTP only for registries marked insecure. Logins go to a token realm
//! only over HTTPS or to a host marked insecure, and redirects never step
//! down from HTTPS to HTTP.

use crate::reference::Reference;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, LOCATION, WWW_AUTHENTICATE};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// Largest manifest, index or config accepted.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// Media types asked for when fetching a manifest.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Why a registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Transport failure.
    #[error("cannot reach registry {registry}: {reason}")]
    Unreachable {
        /// Registry host.
        registry: String,
        /// Why.
        reason: String,
    },
    /// The registry refused our credentials or we have none.
    #[error("registry {registry} denied access to {repository}: {reason}")]
    Denied {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// Why.
        reason: String,
    },
    /// Not there.
    #[error("{what} not found in {registry}/{repository}")]
    NotFound {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// What was asked for.
        what: String,
    },
    /// Content does not match its digest (tampered registry or transport).
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// Expected digest.
        expected: String,
        /// Computed digest.
        actual: String,
    },
    /// The registry points its login at a plain-HTTP token service the
    /// user did not mark insecure: the credentials would travel in clear.
    #[error(
        "registry {registry} asks for the login at {realm}, which is plain HTTP on a host not marked \
         insecure: the credentials were not sent. The token service needs https, or, for a \
         development registry, --insecure-registry {host} (cdh.toml [image] insecure_registries)"
    )]
    InsecureRealm {
        /// Registry host.
        registry: String,
        /// The bearer challenge's realm URL.
        realm: String,
        /// The realm's `host[:port]`.
        host: String,
    },
    /// Anything else the registry said.
    #[error("registry {registry}: {reason}")]
    Protocol {
        /// Registry host.
        registry: String,
        /// Why.
        reason: String,
    },
}

/// A registry login.
#[derive(Clone)]
pub struct Credential {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}, ..)", self.username)
    }
}

/// Credentials per registry host, read from a Docker/containers `auth.json`
/// (`{"auths":{"host":{"auth":"b64(user:pass)"}}}`).
pub fn parse_auth_json(json: &[u8]) -> Result<HashMap<String, Credential>, String> {
    #[derive(Deserialize)]
    struct AuthFile {
        auths: HashMap<String, AuthEntry>,
    }
    #[derive(Deserialize)]
    struct AuthEntry {
        #[serde(default)]
        auth: Option<String>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    }
    let f: AuthFile =
        serde_json::from_slice(json).map_err(|e| format!("auth file is not auth.json: {e}"))?;
    let mut out = HashMap::new();
    for (host, e) in f.auths {
        let host = host
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let (u, p) = match (e.auth, e.username, e.password) {
            (Some(a), _, _) => {
                let raw = Zeroizing::new(
                    B64.decode(a.trim())
                        .map_err(|_| format!("auth for {host} is not base64"))?,
                );
                let s = std::str::from_utf8(&raw).map_err(|_| format!("auth for {host}"))?;
                let (u, p) = s
                    .split_once(':')
                    .ok_or_else(|| format!("auth for {host} is not user:password"))?;
                (u.to_string(), p.to_string())
            }
            (None, Some(u), Some(p)) => (u, p),
            _ => continue,
        };
        out.insert(
            host,
            Credential {
                username: u,
                password: Zeroizing::new(p),
            },
        );
    }
    Ok(out)
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// `host[:port]` of registries spoken to over plain HTTP.
    pub insecure: HashSet<String>,
    /// Logins per registry host.
    pub credentials: HashMap<String, Credential>,
    /// Extra PEM CA certificates trusted besides the system roots.
    pub extra_ca_pem: Vec<Vec<u8>>,
}

/// A distribution API client; cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    cfg: Arc<RegistryConfig>,
    tokens: Arc<Mutex<HashMap<(String, String), String>>>,
}

/// A fetched manifest or index.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The exact bytes (their digest is what signatures cover).
    pub bytes: Vec<u8>,
    /// `Content-Type` as served.
    pub media_type: String,
    /// `sha256:…` of `bytes`.
    pub digest: String,
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
    )
}

fn tls_config(extra: &[Vec<u8>]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    for pem in extra {
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots
                .add(c.map_err(|e| format!("CA file is not PEM: {e}"))?)
                .map_err(|e| format!("CA certificate: {e}"))?;
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// What registry clients send through; see [`http_client`].
pub type HttpClient = reqwest::Client;

/// The HTTP client registry clients send through: the system roots and
/// `extra_ca_pem`, no downgrade on redirect, timeouts, and a pool of
/// connections kept open for reuse. Idle ones close within 10 to 20 s
/// (the pool sweeps once per timeout): in a pod VM each open connection
/// to a forwarded registry is a relay process on the host.
pub fn http_client(extra_ca_pem: &[Vec<u8>]) -> Result<HttpClient, String> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls_config(extra_ca_pem)?)
        .redirect(reqwest::redirect::Policy::custom(no_downgrade))
        .user_agent(concat!("cocoon-image/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10))
        // A registry that stops sending fails the pull instead of hanging it.
        .read_timeout(std::time::Duration::from_secs(60))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(16)
        .pool_idle_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())
}

impl RegistryClient {
    /// A client for these registries, with its own connections.
    pub fn new(cfg: RegistryConfig) -> Result<Self, String> {
        Ok(Self::with_http(http_client(&cfg.extra_ca_pem)?, cfg))
    }

    /// A client for these registries over `http`'s connections (made by
    /// [`http_client`]): clients made one after another reuse the
    /// connections the earlier ones left open. The roots are `http`'s;
    /// `cfg.extra_ca_pem` is not read. Logins and tokens stay each
    /// client's own.
    pub fn with_http(http: HttpClient, cfg: RegistryConfig) -> Self {
        Self {
            http,
            cfg: Arc::new(cfg),
            tokens: Arc::default(),
        }
    }

    fn base(&self, r: &Reference) -> String {
        let scheme = if self.cfg.insecure.contains(&r.registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}/v2/{}", r.api_host(), r.repository)
    }

    fn unreachable(r: &Reference, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Unreachable {
            registry: r.registry.clone(),
            reason: e.to_string(),
        }
    }

    /// Sends a request, answering an auth challenge once.
    async fn send(
        &self,
        r: &Reference,
        push: bool,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let scope = format!(
            "repository:{}:{}",
            r.repository,
            if push { "pull,push" } else { "pull" }
        );
        let key = (r.registry.clone(), scope.clone());
        let cached = self.tokens.lock().ok().and_then(|t| t.get(&key).cloned());
        let mut req = build(&self.http);
        if let Some(tok) = &cached {
            req = req.header(AUTHORIZATION, tok);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Self::unreachable(r, error_chain(&e)))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let auth = self.authorize(r, &challenge, &scope).await?;
        if let Ok(mut t) = self.tokens.lock() {
            t.insert(key, auth.clone());
        }
        let resp = build(&self.http)
            .header(AUTHORIZATION, auth)
            .send()
            .await
            .map_err(|e| Self::unreachable(r, error_chain(&e)))?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(RegistryError::Denied {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                reason: "credentials refused".into(),
            });
        }
        Ok(resp)
    }

    /// The `Authorization` value for a challenge.
    async fn authorize(
        &self,
        r: &Reference,
        challenge: &str,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let denied = |reason: String| RegistryError::Denied {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            reason,
        };
        let cred = self.cfg.credentials.get(&r.registry);
        let basic = cred.map(|c| {
            format!(
                "Basic {}",
                B64.encode(format!("{}:{}", c.username, c.password.as_str()))
            )
        });
        let (kind, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        match kind.to_ascii_lowercase().as_str() {
            "basic" => basic.ok_or_else(|| {
                denied("the registry wants a login; give credentials (auth.json)".into())
            }),
            "bearer" => {
                let params = parse_challenge(params);
                let realm = params
                    .get("realm")
                    .ok_or_else(|| denied("bearer challenge without realm".into()))?;
                let mut url = reqwest::Url::parse(realm)
                    .map_err(|e| denied(format!("bearer realm {realm:?}: {e}")))?;
                if basic.is_some() && !self.may_send_login(&url) {
                    return Err(RegistryError::InsecureRealm {
                        registry: r.registry.clone(),
                        realm: realm.clone(),
                        host: authority(&url),
                    });
                }
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = params.get("service") {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", scope);
                }
                let mut req = self.http.get(url);
                if let Some(b) = &basic {
                    req = req.header(AUTHORIZATION, b);
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| Self::unreachable(r, error_chain(&e)))?;
                if !resp.status().is_success() {
                    return Err(denied(format!("token service answered {}", resp.status())));
                }
                #[derive(Deserialize)]
                struct Token {
                    #[serde(default)]
                    token: Option<String>,
                    #[serde(default)]
                    access_token: Option<String>,
                }
                let t: Token = resp
                    .json()
                    .await
                    .map_err(|e| denied(format!("token response: {e}")))?;
                let tok = t
                    .token
                    .or(t.access_token)
                    .ok_or_else(|| denied("token response without a token".into()))?;
                Ok(format!("Bearer {tok}"))
            }
            _ => Err(denied(format!("unsupported auth challenge {challenge:?}"))),
        }
    }

    /// Whether a login may go to this token realm: over HTTPS, or over
    /// plain HTTP to a `host[:port]` the user marked insecure (the realm's
    /// own, not the registry's: a registry may not send a login elsewhere
    /// in clear).
    fn may_send_login(&self, realm: &reqwest::Url) -> bool {
        match realm.scheme() {
            "https" => true,
            "http" => {
                let host = realm.host_str().unwrap_or_default();
                let with_port = realm
                    .port_or_known_default()
                    .map(|p| format!("{host}:{p}"))
                    .unwrap_or_default();
                self.cfg.insecure.contains(&authority(realm))
                    || self.cfg.insecure.contains(&with_port)
            }
            _ => false,
        }
    }

    fn status_error(r: &Reference, what: &str, status: StatusCode) -> RegistryError {
        match status {
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                what: what.to_string(),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Denied {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                reason: format!("{status} for {what}"),
            },
            s => RegistryError::Protocol {
                registry: r.registry.clone(),
                reason: format!("{s} for {what}"),
            },
        }
    }

    /// Fetches a manifest or index by tag or digest and checks its digest
    /// against the reference (when pinned) and the registry's
    /// `Docker-Content-Digest` header.
    pub async fn manifest(&self, r: &Reference) -> Result<Fetched, RegistryError> {
        let url = format!("{}/manifests/{}", self.base(r), r.manifest_ref());
        let resp = self
            .send(r, false, |c| c.get(&url).header(ACCEPT, MANIFEST_ACCEPT))
            .await?;
        let what = format!("manifest {}", r.manifest_ref());
        if !resp.status().is_success() {
            return Err(Self::status_error(r, &what, resp.status()));
        }
        let media_type = header(resp.headers(), CONTENT_TYPE.as_str());
        let served = header(resp.headers(), "docker-content-digest");
        let bytes = read_limited(resp, MAX_MANIFEST_BYTES, r, &what).await?;
        let digest = sha256_digest(&bytes);
        let expected = r.digest.clone().or(if served.is_empty() {
            None
        } else {
            Some(served)
        });
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(RegistryError::DigestMismatch {
                what,
                expected,
                actual: digest,
            });
        }
        Ok(Fetched {
            bytes,
            media_type,
            digest,
        })
    }

    /// Fetches a small blob (config, signature payload) and checks its digest.
    pub async fn small_blob(&self, r: &Reference, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let resp = self.blob(r, digest).await?;
        let what = format!("blob {digest}");
        let bytes = read_limited(resp, MAX_MANIFEST_BYTES, r, &what).await?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Starts a blob download; the caller streams the body and verifies it.
    pub async fn blob(
        &self,
        r: &Reference,
        digest: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base(r));
        let resp = self.send(r, false, |c| c.get(&url)).await?;
        if !resp.status().is_success() {
            return Err(Self::status_error(
                r,
                &format!("blob {digest}"),
                resp.status(),
            ));
        }
        Ok(resp)
    }

    /// Whether the repository already has a blob.
    pub async fn has_blob(&self, r: &Reference, digest: &str) -> Result<bool, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base(r));
        let resp = self.send(r, true, |c| c.head(&url)).await?;
        Ok(resp.status().is_success())
    }

    /// Uploads a blob (monolithic POST then PUT) unless it is already there.
    pub async fn push_blob(
        &self,
        r: &Reference,
        digest: &str,
        body: impl Fn() -> reqwest::Body,
        len: u64,
    ) -> Result<(), RegistryError> {
        if self.has_blob(r, digest).await? {
            return Ok(());
        }
        let url = format!("{}/blobs/uploads/", self.base(r));
        let resp = self.send(r, true, |c| c.post(&url)).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(Self::status_error(r, "blob upload", resp.status()));
        }
        let loc = header(resp.headers(), LOCATION.as_str());
        let mut put = reqwest::Url::parse(&self.base(r))
            .and_then(|b| b.join(&loc))
            .map_err(|e| RegistryError::Protocol {
                registry: r.registry.clone(),
                reason: format!("upload location {loc:?}: {e}"),
            })?;
        put.query_pairs_mut().append_pair("digest", digest);
        let resp = self
            .send(r, true, |c| {
                c.put(put.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .body(body())
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            let s = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(RegistryError::Protocol {
                registry: r.registry.clone(),
                reason: format!("blob {digest} upload: {s} {}", text.trim()),
            });
        }
        Ok(())
    }

    /// Uploads an in-memory blob; returns its digest and size.
    pub async fn push_bytes(
        &self,
        r: &Reference,
        blob: Vec<u8>,
    ) -> Result<(String, u64), RegistryError> {
        let digest = sha256_digest(&blob);
        let len = blob.len() as u64;
        let body = bytes::Bytes::from(blob);
        self.push_blob(r, &digest, || reqwest::Body::from(body.clone()), len)
            .await?;
        Ok((digest, len))
    }

    /// Uploads a manifest under the reference's tag (or digest); returns its digest.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        bytes: Vec<u8>,
        media_type: &str,
    ) -> Result<String, RegistryError> {
        let digest = sha256_digest(&bytes);
        let url = format!(
            "{}/manifests/{}",
            self.base(r),
            r.tag.as_deref().unwrap_or(&digest)
        );
        let resp = self
            .send(r, true, |c| {
                c.put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.clone())
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            let s = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(RegistryError::Protocol {
                registry: r.registry.clone(),
                reason: format!("manifest upload: {s} {}", text.trim()),
            });
        }
        Ok(digest)
    }
}

/// `host[:port]` of a URL as the user writes registries (IPv6 in brackets,
/// the port only when the URL names one).
fn authority(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// Follows up to 10 redirects (blob storage), never from HTTPS down to
/// plain HTTP, where a same-host hop would keep the `Authorization` header.
fn no_downgrade(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let downgrade = attempt.url().scheme() != "https"
        && attempt.previous().iter().any(|u| u.scheme() == "https");
    if downgrade {
        let to = attempt.url().to_string();
        attempt.error(format!("refusing a redirect from https down to {to}"))
    } else if attempt.previous().len() > 10 {
        attempt.error("too many redirects")
    } else {
        attempt.follow()
    }
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `key="value", key2="value2"` from a challenge.
fn parse_challenge(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, next) = if let Some(q) = v.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match v.find(',') {
                Some(end) => (&v[..end], &v[end..]),
                None => (v, ""),
            }
        };
        out.insert(k, val.to_string());
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
    r: &Reference,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| RegistryClient::unreachable(r, error_chain(&e)))?
    {
        if out.len() + chunk.len() > limit {
            return Err(RegistryError::Protocol {
                registry: r.registry.clone(),
                reason: format!("{what} is larger than {limit} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
