//! Key Broker Client: runs the CoCo RCAR handshake (`auth` → `attest`)
//! against a KBS (ours or stock) and fetches resources sealed to the
//! client's ephemeral TEE key.

mod tls;

pub use tls::pinned_client_config;

use cocoon_attester::Attester;
use cocoon_types::error_body::ErrorBody;
use cocoon_types::jwe::{FlattenedJwe, TeeKeyPair};
use cocoon_types::resource::ResourcePath;
use cocoon_types::{
    HashAlgorithm, KBS_PREFIX, KBS_PROTOCOL_VERSION, SESSION_COOKIE, binding, tee_name,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The KBS could not be reached.
    #[error("cannot reach the KBS at {url}: {detail}")]
    Unreachable {
        /// Base URL.
        url: String,
        /// Cause.
        detail: String,
    },
    /// The KBS answered with an error.
    #[error("KBS refused {what} ({status}): {detail}")]
    Refused {
        /// Which step.
        what: &'static str,
        /// HTTP status.
        status: u16,
        /// Error variant name from the body.
        variant: String,
        /// The KBS's explanation.
        detail: String,
    },
    /// The KBS answered with something that is not the protocol.
    #[error("unexpected KBS response to {what}: {detail}")]
    Protocol {
        /// Which step.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Evidence could not be produced.
    #[error(transparent)]
    Attester(#[from] cocoon_attester::AttesterError),
    /// The resource could not be decrypted.
    #[error(transparent)]
    Jwe(#[from] cocoon_types::jwe::JweError),
    /// A plain `http://` KBS without the explicit insecure setting.
    #[error(
        "refusing the plain-HTTP KBS {url}: resources are sealed to the TEE key but nothing \
         authenticates their sender, so over plain HTTP the host could forge them (signature \
         policies, layer keys). Use an https:// URL with the KBS certificate (--kbs-cert, or \
         cert / kbs_cert next to the url in aa.toml / cdh.toml); for development only, allow \
         it with --insecure-http-kbs or insecure_http = true next to the url"
    )]
    InsecureHttp {
        /// The KBS URL.
        url: String,
    },
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// The HTTP status, when the KBS refused.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How often and how patiently to retry a KBS that cannot be reached or
/// answers 5xx. Refusals (4xx) are never retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in total (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry; doubles each time.
    pub initial_backoff: std::time::Duration,
    /// Upper bound of one delay.
    pub max_backoff: std::time::Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial_backoff: std::time::Duration::from_millis(200),
            max_backoff: std::time::Duration::from_secs(5),
        }
    }
}

/// Client options.
#[derive(Default)]
pub struct ClientOptions {
    /// Retry behaviour for unreachable or failing KBSes.
    pub retry: RetryPolicy,
    /// PEM certificate(s) to pin for HTTPS.
    pub kbs_cert_pem: Option<Vec<u8>>,
    /// Initdata TOML document to send in every Attestation.
    pub init_data: Option<String>,
    /// Use this TEE key pair instead of a fresh P-256 one.
    pub key_pair: Option<Arc<TeeKeyPair>>,
    /// Accept a plain `http://` KBS (development only): JWE sealing hides
    /// resources from the path but does not authenticate who sent them.
    pub insecure_http: bool,
}

#[derive(Clone)]
struct SessionState {
    cookie: String,
    token: String,
    /// Token expiry (unix seconds), from its `exp` claim.
    exp: Option<i64>,
}

/// The `exp` claim of a JWT, read without verifying it (the guest only
/// uses it to know when to attest again).
fn jwt_exp(token: &str) -> Option<i64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_i64()
}

/// Whether a request failed in the TLS handshake (for example a KBS
/// certificate other than the pinned one): retrying will not help.
fn is_tls_failure(e: &reqwest::Error) -> bool {
    // The rustls error sits inside nested io::Errors, whose `source()`
    // skips the wrapped error, so look inside them explicitly.
    fn is_rustls(e: &(dyn std::error::Error + 'static)) -> bool {
        if e.is::<rustls::Error>() {
            return true;
        }
        match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => is_rustls(inner),
            None => false,
        }
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if is_rustls(s) {
            return true;
        }
        src = s.source();
    }
    false
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Installs the process-wide TLS crypto provider (ring) if none is set.
/// HTTP clients built by this crate and the CLI need one.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A KBS client for one guest.
pub struct KbsClient {
    http: reqwest::Client,
    base: String,
    attester: Arc<dyn Attester>,
    key: Arc<TeeKeyPair>,
    init_data: Option<String>,
    retry: RetryPolicy,
    session: Mutex<Option<SessionState>>,
    /// Whether the TEE's key enrollment (EK credential activation) has
    /// been settled with this KBS: done, refused, or not offered.
    enrolled: tokio::sync::Mutex<bool>,
}

/// How long one request of the TPM key enrollment may take.
const ENROLL_STEP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn cookie_from(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

async fn refused(what: &'static str, resp: reqwest::Response) -> ClientError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => ClientError::Refused {
            what,
            status,
            variant: b.variant().to_string(),
            detail: b.detail,
        },
        Err(_) => ClientError::Refused {
            what,
            status,
            variant: String::new(),
            detail: text.chars().take(200).collect(),
        },
    }
}

impl KbsClient {
    /// A client for the KBS at `url`: `https://` with a pinned certificate,
    /// or `http://` only when `opts.insecure_http` says so.
    pub fn new(
        url: &str,
        attester: Arc<dyn Attester>,
        opts: ClientOptions,
    ) -> Result<Self, ClientError> {
        install_crypto_provider();
        let base = url.trim_end_matches('/').to_string();
        let mut b = reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .timeout(std::time::Duration::from_secs(30));
        if base.starts_with("https://") {
            let pem = opts.kbs_cert_pem.ok_or_else(|| {
                ClientError::Config("an https:// KBS needs its certificate: pass --kbs-cert".into())
            })?;
            b = b.use_preconfigured_tls(pinned_client_config(&pem).map_err(ClientError::Config)?);
        } else if base.starts_with("http://") {
            if !opts.insecure_http {
                return Err(ClientError::InsecureHttp { url: base });
            }
            // Once per process: a load generator builds many clients.
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    url = %base,
                    "plain-HTTP KBS allowed by the insecure setting: resources are not authenticated (development only)"
                );
            });
        } else {
            return Err(ClientError::Config(format!(
                "KBS URL '{url}' must start with https:// (or http:// with the insecure setting)"
            )));
        }
        let http = b.build().map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Self {
            http,
            base,
            attester,
            key: opts
                .key_pair
                .unwrap_or_else(|| Arc::new(TeeKeyPair::generate_ec())),
            init_data: opts.init_data,
            retry: opts.retry,
            session: Mutex::new(None),
            enrolled: tokio::sync::Mutex::new(false),
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        // reqwest's top-level message hides the cause (connection refused,
        // certificate mismatch): show the whole chain.
        let mut detail = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            src = s.source();
        }
        ClientError::Unreachable {
            url: self.base.clone(),
            detail,
        }
    }

    /// Sends the request `make` builds, retrying with exponential backoff
    /// while the KBS cannot be reached or answers 5xx. TLS failures (a
    /// wrong pinned certificate) are not retried: they will not heal.
    async fn send(
        &self,
        what: &'static str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let mut delay = self.retry.initial_backoff;
        let attempts = self.retry.attempts.max(1);
        for attempt in 1..=attempts {
            let last = attempt == attempts;
            match make().send().await {
                Ok(resp) if resp.status().is_server_error() && !last => {
                    tracing::warn!(what, status = %resp.status(), attempt, "KBS error, retrying in {delay:?}");
                }
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    let tls = is_tls_failure(&e);
                    let err = self.unreachable(e);
                    if last || tls {
                        return Err(err);
                    }
                    tracing::warn!(what, attempt, error = %err, "KBS unreachable, retrying in {delay:?}");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.retry.max_backoff);
        }
        unreachable!("the last attempt returns")
    }

    /// The TEE key pair resources are sealed to.
    pub fn key_pair(&self) -> &Arc<TeeKeyPair> {
        &self.key
    }

    /// Runs `auth` + `attest` and returns the attestation token.
    pub async fn attest(&self) -> Result<String, ClientError> {
        Ok(self.new_session().await?.token)
    }

    /// Runs `f` on a blocking thread when the attester may block (TPM,
    /// TEE ioctl), keeping the reactor free.
    async fn attester_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Attester) -> Result<T, cocoon_attester::AttesterError> + Send + 'static,
    ) -> Result<T, ClientError> {
        if !self.attester.may_block() {
            return Ok(f(&*self.attester)?);
        }
        let attester = self.attester.clone();
        Ok(tokio::task::spawn_blocking(move || f(&*attester))
            .await
            .map_err(|e| ClientError::Config(format!("attester task failed: {e}")))??)
    }

    /// Before the first attestation: a TEE that offers an endorsement (a
    /// TPM with an EK certificate) proves its attestation key to the KBS by
    /// credential activation, so the KBS trusts that key without an admin
    /// adding it. Settled once it succeeded, or the KBS refused the
    /// challenge (it enrolls no keys, or not this TPM's): attestation goes
    /// on, and the KBS trusts the key only if an admin added it. Any other
    /// failure (KBS unreachable or failing, a lost challenge, a TPM error)
    /// is tried again before the next attestation; each try is one request
    /// per step with a short timeout, so evidence is never held up long.
    pub async fn enroll_once(&self) {
        let mut done = self.enrolled.lock().await;
        if *done {
            return;
        }
        let t = std::time::Instant::now();
        *done = match self.enroll().await {
            Ok(None) => true,
            Ok(Some(by)) => {
                tracing::info!(
                    kbs = %self.base,
                    by = %by,
                    ms = t.elapsed().as_millis() as u64,
                    "TPM attestation key enrolled by EK credential activation"
                );
                true
            }
            Err(
                e @ ClientError::Refused {
                    what: "EK challenge",
                    status: 400..=499,
                    ..
                },
            ) => {
                tracing::warn!(
                    "TPM key enrollment by EK certificate refused ({e}); attesting anyway: the KBS trusts the key only if an admin added it"
                );
                true
            }
            Err(e) => {
                tracing::warn!("TPM key enrollment failed, to be tried again: {e}");
                false
            }
        };
    }

    /// One request of the enrollment: a single try with a short timeout.
    async fn enroll_step(
        &self,
        what: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<Value, ClientError> {
        let resp = req
            .timeout(ENROLL_STEP_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(refused(what, resp).await);
        }
        resp.json().await.map_err(|e| ClientError::Protocol {
            what,
            detail: e.to_string(),
        })
    }

    /// One credential activation; the CA the KBS anchored the EK in, or
    /// "an admin" when the key was already trusted. `None`: nothing to enroll.
    async fn enroll(&self) -> Result<Option<String>, ClientError> {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD as B64;
        let Some(e) = self.attester_call(|a| a.endorsement()).await? else {
            return Ok(None);
        };
        let proto = |what: &'static str, detail: &str| ClientError::Protocol {
            what,
            detail: detail.to_string(),
        };
        let url = format!("{}{KBS_PREFIX}/tpm/ek-challenge", self.base);
        let body =
            json!({"ek_cert": B64.encode(&e.ek_cert), "ak_public": B64.encode(&e.ak_public)});
        let ch = self
            .enroll_step("EK challenge", self.http.post(&url).json(&body))
            .await?;
        let field = |k: &str| {
            ch.get(k)
                .and_then(Value::as_str)
                .and_then(|v| B64.decode(v).ok())
                .ok_or_else(|| proto("EK challenge", &format!("no base64 {k} in the answer")))
        };
        let (id_object, secret_in) = (field("id_object")?, field("encrypted_secret")?);
        let challenge_id = ch
            .get("challenge_id")
            .and_then(Value::as_str)
            .ok_or_else(|| proto("EK challenge", "no challenge_id in the answer"))?;
        let challenge_id =
            serde_json::to_string(challenge_id).map_err(|e| ClientError::Config(e.to_string()))?;
        let secret = self
            .attester_call(move |a| a.activate_credential(&id_object, &secret_in))
            .await?;
        let secret = Zeroizing::new(B64.encode(&*secret));
        let answer = Zeroizing::new(format!(
            "{{\"challenge_id\":{challenge_id},\"secret\":\"{}\"}}",
            &*secret
        ));
        let url = format!("{}{KBS_PREFIX}/tpm/ek-activate", self.base);
        let done = self
            .enroll_step(
                "EK activation",
                self.http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(answer.as_bytes().to_vec()),
            )
            .await?;
        Ok(Some(
            done.get("enrolled_by_ek_of")
                .and_then(Value::as_str)
                .unwrap_or("an admin (already trusted)")
                .to_string(),
        ))
    }

    /// Runs `auth` + `attest` and keeps (and returns) the new session.
    async fn new_session(&self) -> Result<SessionState, ClientError> {
        self.enroll_once().await;
        let started = std::time::Instant::now();
        let tee = tee_name(self.attester.tee());
        let req = json!({
            "version": KBS_PROTOCOL_VERSION,
            "tee": tee,
            "extra-params": {"supported-hash-algorithms": ["sha256", "sha384", "sha512"]},
        });
        let url = format!("{}{KBS_PREFIX}/auth", self.base);
        let resp = self
            .send("auth", || self.http.post(&url).json(&req))
            .await?;
        if !resp.status().is_success() {
            return Err(refused("auth", resp).await);
        }
        let mut cookie = cookie_from(&resp).ok_or(ClientError::Protocol {
            what: "auth",
            detail: "no kbs-session-id cookie".into(),
        })?;
        let challenge: Value = resp.json().await.map_err(|e| ClientError::Protocol {
            what: "auth",
            detail: e.to_string(),
        })?;
        let nonce = challenge
            .get("nonce")
            .and_then(Value::as_str)
            .ok_or(ClientError::Protocol {
                what: "auth",
                detail: "challenge has no nonce".into(),
            })?
            .to_string();
        let alg = challenge
            .pointer("/extra-params/selected-hash-algorithm")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<HashAlgorithm>().ok())
            .unwrap_or(HashAlgorithm::Sha384);
        let pubkey = self.key.public_jwk();
        let rd = binding::primary_report_data(alg, &nonce, &pubkey, "").map_err(|e| {
            ClientError::Protocol {
                what: "attest",
                detail: e.to_string(),
            }
        })?;
        let evidence = self.attester_call(move |a| a.evidence(&rd)).await?;
        let init = self
            .init_data
            .as_ref()
            .map(|b| json!({"format": "toml", "body": b}))
            .unwrap_or(Value::Null);
        let att = json!({
            "init-data": init,
            "runtime-data": {"nonce": nonce, "tee-pubkey": pubkey},
            "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
        });
        let url = format!("{}{KBS_PREFIX}/attest", self.base);
        let cookie_header = format!("{SESSION_COOKIE}={cookie}");
        let resp = self
            .send("attest", || {
                self.http
                    .post(&url)
                    .header(reqwest::header::COOKIE, &cookie_header)
                    .json(&att)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(refused("attest", resp).await);
        }
        if let Some(c) = cookie_from(&resp) {
            cookie = c;
        }
        let body: Value = resp.json().await.map_err(|e| ClientError::Protocol {
            what: "attest",
            detail: e.to_string(),
        })?;
        let token = body
            .get("token")
            .and_then(Value::as_str)
            .ok_or(ClientError::Protocol {
                what: "attest",
                detail: "no token in the response".into(),
            })?
            .to_string();
        let state = SessionState {
            cookie,
            exp: jwt_exp(&token),
            token,
        };
        if let Ok(mut s) = self.session.lock() {
            *s = Some(state.clone());
        }
        tracing::debug!(
            kbs = %self.base,
            tee,
            ms = started.elapsed().as_millis() as u64,
            "attested"
        );
        Ok(state)
    }

    /// The kept session while its token has not expired (checked without
    /// leeway, as CoCo's client does); otherwise a new one.
    async fn session(&self) -> Result<SessionState, ClientError> {
        let kept = self.session.lock().ok().and_then(|s| s.clone());
        match kept {
            Some(s) if s.exp.is_none_or(|exp| exp > now_unix()) => Ok(s),
            _ => self.new_session().await,
        }
    }

    /// The current token, attesting first if there is none or it has expired.
    pub async fn token(&self) -> Result<String, ClientError> {
        Ok(self.session().await?.token)
    }

    async fn fetch(&self, path: &ResourcePath, cookie: &str) -> Result<FlattenedJwe, ClientError> {
        let url = format!("{}{KBS_PREFIX}/resource/{path}", self.base);
        let cookie_header = format!("{SESSION_COOKIE}={cookie}");
        let resp = self
            .send("resource", || {
                self.http
                    .get(&url)
                    .header(reqwest::header::COOKIE, &cookie_header)
            })
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(refused("resource", resp).await);
        }
        resp.json().await.map_err(|e| ClientError::Protocol {
            what: "resource",
            detail: format!("not a JWE: {e}"),
        })
    }

    /// Fetches and decrypts a resource, attesting first if needed and once
    /// more if the KBS refuses the session (401/403).
    pub async fn get_resource(
        &self,
        path: &ResourcePath,
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let cookie = self.session().await?.cookie;
        let jwe = match self.fetch(path, &cookie).await {
            // A stock KBS answers 401 to everything, ours 403 to a policy denial:
            // either may be cured by fresh evidence (a token from before a
            // reference-value change), so attest once more.
            Err(e) if matches!(e.status(), Some(401 | 403)) => {
                let fresh = self.new_session().await?;
                self.fetch(path, &fresh.cookie).await?
            }
            r => r?,
        };
        Ok(self.key.decrypt(&jwe)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Arc<dyn Attester> {
        Arc::from(cocoon_attester::attester_for("sample", &Default::default()).unwrap())
    }

    /// A plain-HTTP KBS is refused unless the insecure setting is given,
    /// and the refusal says what to do instead.
    #[test]
    fn plain_http_needs_the_explicit_insecure_setting() {
        let err = KbsClient::new("http://127.0.0.1:8080", sample(), ClientOptions::default())
            .err()
            .expect("plain HTTP refused");
        assert!(matches!(err, ClientError::InsecureHttp { .. }), "{err}");
        let msg = err.to_string();
        for hint in [
            "https://",
            "--kbs-cert",
            "--insecure-http-kbs",
            "insecure_http = true",
        ] {
            assert!(msg.contains(hint), "{hint} missing from: {msg}");
        }
        let opts = ClientOptions {
            insecure_http: true,
            ..ClientOptions::default()
        };
        assert!(KbsClient::new("http://127.0.0.1:8080", sample(), opts).is_ok());
        // https still needs its certificate; other schemes are refused.
        let err = KbsClient::new("https://127.0.0.1:8080", sample(), ClientOptions::default())
            .err()
            .expect("https without a certificate");
        assert!(err.to_string().contains("certificate"), "{err}");
        let opts = ClientOptions {
            insecure_http: true,
            ..ClientOptions::default()
        };
        assert!(KbsClient::new("ftp://127.0.0.1", sample(), opts).is_err());
    }
}
