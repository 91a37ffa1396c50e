//! The KBS HTTP API: the CoCo RCAR protocol (`auth`, `attest`, `resource`),
//! the admin endpoints the stock KBS has, and a few admin extensions
//! (listing, reference-value expiry, denial log).

use crate::admin::{AdminKey, verify_admin_token};
use crate::decision::{Decision, DecisionCache, decision_key};
use crate::error::KbsError;
use crate::metrics::{AttestLabels, Metrics, ReleaseLabels, RouteLabels, RouteOnly};
use crate::session::{Attested, OpenError, Session, SessionSealer};
use crate::tokens::{OpenedCookies, VerifiedToken, VerifiedTokens};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_attestation::{AttestationService, RESOURCE_POLICY};
use cocoon_rvps::Rvps;
use cocoon_store::{Kek, Store, ns};
use cocoon_types::jwe::SealingKey;
use cocoon_types::resource::ResourcePath;
use cocoon_types::{Attestation, SESSION_COOKIE, Tee, parse_tee};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Request bodies above this size are refused with 413.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Denials kept in the log.
pub const DENIALS_KEPT: usize = 1000;

/// One refused request, as `cocoon explain` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Denial {
    /// Unix seconds.
    pub at: i64,
    /// `attestation` (evidence refused), `appraisal` (token issued but not
    /// affirming) or `resource` (resource policy refused).
    pub kind: String,
    /// TEE name, when known.
    pub tee: Option<String>,
    /// Resource path, for `resource`.
    pub resource: Option<String>,
    /// One-line reason.
    pub reason: String,
    /// Which claim failed which rule.
    pub details: Vec<String>,
}

/// Everything the handlers share.
pub struct KbsState {
    /// The audit log (releases, denials, tokens, admin changes).
    pub audit: crate::audit::AuditLog,
    /// The shared store.
    pub store: Arc<dyn Store>,
    /// Key-encryption key for secrets at rest.
    pub kek: Arc<Kek>,
    /// Session cookie sealer.
    pub sessions: SessionSealer,
    /// The attestation service.
    pub attestation: AttestationService,
    /// Reference values.
    pub rvps: Rvps,
    /// Trusted admin public keys.
    pub admin_keys: Vec<AdminKey>,
    /// Auditors' public keys: they may read the audit log only.
    pub auditor_keys: Vec<AdminKey>,
    /// Accept admin requests without authentication (development only).
    pub insecure_admin: bool,
    /// Session lifetime from `auth`, seconds.
    pub session_timeout_secs: i64,
    /// Metrics.
    pub metrics: Metrics,
    /// Resource-policy decision cache.
    pub decisions: DecisionCache,
    /// Tokens already verified.
    pub verified_tokens: VerifiedTokens,
    /// Attested session cookies opened before.
    pub opened_cookies: OpenedCookies,
    /// Queue to the denial recorder.
    pub denials: mpsc::Sender<Denial>,
    /// TPM manufacturer CAs for AK enrollment by EK certificate, the
    /// hardware makers' first (AKs they enroll count as hardware-backed).
    pub ek_trust: Vec<cocoon_verifier::tpm::ek::EkTrust>,
    /// EK challenges waiting for their answer.
    pub ek_pending: crate::tpm_aks::EkPending,
    /// How long a request's body may take to arrive after its headers.
    pub body_timeout: std::time::Duration,
}

pub(crate) type AppState = Arc<KbsState>;

/// Unix time, seconds.
pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, KbsError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            KbsError::BodyTooLarge(BODY_LIMIT)
        } else {
            KbsError::BadRequest(e.body_text())
        }
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, KbsError> {
    serde_json::from_slice(body).map_err(|e| KbsError::BadRequest(format!("expected {what}: {e}")))
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn http_date(unix: i64) -> String {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_default()
}

fn with_cookie(mut resp: Response, value: &str, exp: i64) -> Response {
    let c = format!("{SESSION_COOKIE}={value}; Expires={}", http_date(exp));
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

fn open_session(s: &KbsState, headers: &HeaderMap) -> Result<Session, KbsError> {
    let c = session_cookie(headers).ok_or(KbsError::MissingSession)?;
    s.sessions.open(c, now()).map_err(|e| match e {
        OpenError::Invalid => KbsError::InvalidSession,
        OpenError::Expired => KbsError::ExpiredSession,
    })
}

pub(crate) fn require_admin(s: &KbsState, headers: &HeaderMap) -> Result<(), KbsError> {
    if s.insecure_admin {
        return Ok(());
    }
    let token = bearer(headers).ok_or_else(|| {
        KbsError::AdminAuth(
            "send Authorization: Bearer <admin JWT> (cocoon admin does this)".into(),
        )
    })?;
    verify_admin_token(token, &s.admin_keys, now()).map_err(|e| {
        if verify_admin_token(token, &s.auditor_keys, now()).is_ok() {
            KbsError::AdminAuth(
                "the token is signed by an auditor's key, which may read the audit log \
                 (cocoon audit tail|verify) and nothing else"
                    .into(),
            )
        } else {
            KbsError::AdminAuth(e.to_string())
        }
    })
}

/// [`require_admin`], with auditors' keys trusted too: for reading the
/// audit log.
fn require_auditor(s: &KbsState, headers: &HeaderMap) -> Result<(), KbsError> {
    if s.auditor_keys.is_empty() {
        return require_admin(s, headers);
    }
    if s.insecure_admin {
        return Ok(());
    }
    let token = bearer(headers).ok_or_else(|| {
        KbsError::AdminAuth("send Authorization: Bearer <admin or auditor JWT>".into())
    })?;
    let keys = [s.admin_keys.as_slice(), s.auditor_keys.as_slice()].concat();
    verify_admin_token(token, &keys, now()).map_err(|e| KbsError::AdminAuth(e.to_string()))
}

fn record(s: &KbsState, d: Denial) {
    tracing::warn!(kind = %d.kind, tee = ?d.tee, resource = ?d.resource, reason = %d.reason, details = ?d.details, "request denied");
    s.audit.record(crate::audit::Entry::new(
        "denial",
        json!({"stage": d.kind, "tee": d.tee, "resource": d.resource, "reason": d.reason, "details": d.details}),
    ));
    // Never block the request path on the log; drop when the recorder lags.
    let _ = s.denials.try_send(d);
}

/// Runs the denial recorder until the channel closes.
pub async fn denial_recorder(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Denial>) {
    while let Some(d) = rx.recv().await {
        let store = store.clone();
        let bytes = serde_json::to_vec(&d).unwrap_or_default();
        let r =
            tokio::task::spawn_blocking(move || store.append(ns::DENIALS, &bytes, DENIALS_KEPT))
                .await;
        if !matches!(r, Ok(Ok(_))) {
            tracing::error!("cannot record a denial in the store");
        }
    }
}

#[derive(Deserialize)]
struct LooseRequest {
    version: String,
    tee: String,
    #[serde(rename = "extra-params", default)]
    _extra_params: Value,
}

fn version_supported(v: &str) -> bool {
    // Accept 0.4.x: the stock client sends 0.4.0 today.
    let mut it = v.split('.');
    matches!((it.next(), it.next(), it.next(), it.next()), (Some("0"), Some("4"), Some(p), None) if p.parse::<u32>().is_ok())
}

async fn auth(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, KbsError> {
    let body = body_bytes(body)?;
    let req: LooseRequest = parse_json(&body, "a KBS Request {version, tee, extra-params}")?;
    if !version_supported(&req.version) {
        return Err(KbsError::UnsupportedVersion(req.version));
    }
    let tee = parse_tee(&req.tee).ok_or_else(|| {
        KbsError::UnsupportedTee(format!(
            "unknown TEE '{}': use one of {}",
            req.tee,
            s.attestation.verifiers().supported().join(", ")
        ))
    })?;
    s.attestation
        .verifiers()
        .get(tee)
        .map_err(|e| KbsError::UnsupportedTee(e.to_string()))?;
    let mut raw = [0u8; 32];
    OsRng.fill_bytes(&mut raw);
    let nonce = B64.encode(raw);
    let extra = if tee == Tee::Se {
        json!({"selected-hash-algorithm": "sha512"})
    } else {
        json!("")
    };
    let exp = now() + s.session_timeout_secs;
    let cookie = s.sessions.seal(&Session {
        nonce: nonce.clone(),
        tee: req.tee,
        exp,
        attested: None,
    });
    let resp = Json(json!({"nonce": nonce, "extra-params": extra})).into_response();
    Ok(with_cookie(resp, &cookie, exp))
}

async fn attest(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, KbsError> {
    let mut session = open_session(&s, &headers)?;
    let body = body_bytes(body)?;
    if let Some(a) = &session.attested {
        // As the stock KBS: a repeated attest returns the session's token.
        let resp = Json(json!({"token": a.token})).into_response();
        let cookie = session_cookie(&headers).unwrap_or_default().to_string();
        return Ok(with_cookie(resp, &cookie, session.exp));
    }
    let att: Attestation = parse_json(
        &body,
        "a KBS Attestation {init-data, runtime-data, tee-evidence}",
    )?;
    let tee = parse_tee(&session.tee).ok_or(KbsError::InvalidSession)?;
    // Verification is CPU work on the evidence, on collateral already kept
    // and on cached policies and reference values (a thread hand-off would
    // cost more than the sample TEE's whole verification), so it runs
    // here. One that must block (fetch collateral from PCCS or AMD KDS,
    // read the store past its caches: a TPM AK, a policy or reference
    // value due for a re-read) runs again on a blocking thread, off the
    // workers. A panic is an internal error, as on the blocking pool.
    let inline = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cocoon_types::inline::without_blocking(|| s.attestation.attest(tee, &session.nonce, &att))
    }))
    .map_err(|_| KbsError::Internal("the verifier failed".into()))?;
    let verdict = match inline {
        Some(v) => v,
        None => {
            let (state, nonce) = (s.clone(), session.nonce.clone());
            tokio::task::spawn_blocking(move || state.attestation.attest(tee, &nonce, &att))
                .await
                .map_err(|e| KbsError::Internal(format!("verifier task failed: {e}")))?
        }
    };
    let mut appraisal = match verdict {
        Ok(a) => a,
        Err(e) => {
            let unavailable = e.is_unavailable();
            s.metrics
                .attestations
                .get_or_create(&AttestLabels {
                    tee: session.tee.clone(),
                    result: if unavailable {
                        "unavailable"
                    } else {
                        "rejected"
                    }
                    .into(),
                })
                .inc();
            record(
                &s,
                Denial {
                    at: now(),
                    kind: "attestation".into(),
                    tee: Some(session.tee.clone()),
                    resource: None,
                    reason: e.to_string(),
                    details: vec![],
                },
            );
            return Err(if unavailable {
                KbsError::Unavailable {
                    detail: e.to_string(),
                }
            } else {
                KbsError::AttestationFailed(e.guest_message())
            });
        }
    };
    let status = appraisal.status.as_str().to_string();
    s.metrics
        .attestations
        .get_or_create(&AttestLabels {
            tee: session.tee.clone(),
            result: status.clone(),
        })
        .inc();
    if appraisal.status != ear::TrustTier::Affirming {
        let mut details = appraisal.failed_claims.clone();
        details.extend(appraisal.explain.iter().cloned());
        record(
            &s,
            Denial {
                at: now(),
                kind: "appraisal".into(),
                tee: Some(session.tee.clone()),
                resource: None,
                reason: format!(
                    "appraisal is '{status}': the token will not satisfy policies that require 'affirming'"
                ),
                details,
            },
        );
    }
    let sealing = SealingKey::new(&appraisal.tee_pubkey)
        .map_err(|e| KbsError::BadRequest(format!("runtime-data tee-pubkey: {e}")))?;
    let t = now();
    let verified = s.verified_tokens.remember(
        &appraisal.token,
        std::mem::take(&mut appraisal.claims),
        sealing,
        t,
    );
    session.attested = Some(Attested {
        token: appraisal.token.clone(),
        token_exp: appraisal.exp,
    });
    let cookie = s.sessions.seal(&session);
    // The guest's next request brings this cookie: it need not be opened.
    s.opened_cookies.insert(
        OpenedCookies::digest(&cookie),
        session.exp.min(verified.exp),
        &session.tee,
        verified.digest,
        t,
    );
    s.audit.record(crate::audit::Entry::new(
        "token",
        json!({"tee": session.tee, "status": status, "token_sha256": hex::encode(verified.digest), "exp": appraisal.exp}),
    ));
    let resp = Json(json!({"token": appraisal.token})).into_response();
    Ok(with_cookie(resp, &cookie, session.exp))
}

/// The resource policy's decision for `token` on `rpath`: cached, else
/// evaluated. A policy that cannot read its reference values gives no
/// decision (the caller answers 503), never a denial or a release.
fn decide(
    s: &KbsState,
    token: &VerifiedToken,
    rpath: &ResourcePath,
    query: &HashMap<String, String>,
) -> Result<Decision, KbsError> {
    let policy = s
        .attestation
        .policies()
        .get(RESOURCE_POLICY)
        .map_err(|e| policy_error(&e, KbsError::Internal))?;
    let mut qkeys: Vec<_> = query.iter().collect();
    qkeys.sort();
    let request = format!("{rpath}?{qkeys:?}");
    let key = decision_key(&token.digest, &request, policy.digest());
    if let Some(d) = s.decisions.get(&key) {
        return Ok(d);
    }
    let data = json!({"plugin": "resource", "resource-path": rpath.segments(), "query": query});
    let (allow, lookups) = match policy.eval_with_lookups("allow", &token.claims, Some(&data)) {
        Ok((v, l)) => (v == Some(Value::Bool(true)), l.count),
        Err(e) if e.is_unavailable() => return Err(policy_error(&e, KbsError::Internal)),
        Err(_) => (false, 0),
    };
    let reasons = if allow {
        Vec::new()
    } else {
        match policy.eval("deny_reasons", &token.claims, Some(&data)) {
            Ok(Some(Value::Array(a))) => a
                .into_iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            Ok(_) => vec!["the policy's allow rule is not true".into()],
            Err(e) if e.is_unavailable() => return Err(policy_error(&e, KbsError::Internal)),
            Err(e) => vec![e.to_string()],
        }
    };
    let d = Decision {
        allow,
        reasons: Arc::new(reasons),
    };
    if lookups == 0 {
        s.decisions.put(key, d.clone());
    }
    Ok(d)
}

/// A policy error: storage or reference values that cannot be read now are
/// 503 (retry later), the rest become `other`.
fn policy_error(
    e: &cocoon_attestation::policy::PolicyError,
    other: fn(String) -> KbsError,
) -> KbsError {
    if e.is_unavailable() {
        KbsError::Unavailable {
            detail: e.to_string(),
        }
    } else {
        other(e.to_string())
    }
}

/// As [`policy_error`], for the reference value store.
fn rvps_error(e: cocoon_rvps::RvpsError, other: fn(String) -> KbsError) -> KbsError {
    match e {
        cocoon_rvps::RvpsError::Store(e) => e.into(),
        e => other(e.to_string()),
    }
}

/// The token a resource request presents, verified (with the key its
/// resources are sealed to), and the session's TEE name: the session
/// cookie's token first (as the stock KBS), else a Bearer token.
fn presented_token(s: &KbsState, headers: &HeaderMap) -> Result<(VerifiedToken, String), KbsError> {
    let t = now();
    // A cookie seen before: its token by digest, as long as the key that
    // sealed it still opens cookies and neither has expired (otherwise the
    // cookie is opened again, which says why it is no use).
    let cookie = session_cookie(headers);
    let cookie_digest = cookie.map(OpenedCookies::digest);
    if let (Some(c), Some(d)) = (cookie, &cookie_digest)
        && let Some((tee, token)) = s.opened_cookies.get(d, t)
        && s.sessions.cookie_key_usable(c)
        && let Some(v) = s.verified_tokens.get(&token, t)
    {
        return Ok((v, tee.to_string()));
    }
    let from_cookie = match open_session(s, headers) {
        Ok(sess) => match sess.attested {
            Some(a) if a.token_exp > t => Ok((a.token, sess.tee, sess.exp)),
            Some(_) => Err(KbsError::ExpiredSession),
            None => Err(KbsError::NotAttested),
        },
        Err(e) => Err(e),
    };
    let verify = |tok: &str| {
        s.verified_tokens
            .verify(s.attestation.signer(), tok, t)
            .map_err(|e| KbsError::TokenInvalid(e.to_string()))
    };
    match (from_cookie, bearer(headers)) {
        (Ok((token, tee, exp)), _) => {
            let v = verify(&token)?;
            if let Some(d) = cookie_digest {
                s.opened_cookies
                    .insert(d, exp.min(v.exp), &tee, v.digest, t);
            }
            Ok((v, tee))
        }
        (Err(_), Some(tok)) => Ok((verify(tok)?, "token".to_string())),
        (Err(e), None) => Err(e),
    }
}

/// Query strings longer than this are refused (they key the decision).
const MAX_QUERY_BYTES: usize = 4096;

fn record_resource_denial(
    s: &KbsState,
    tee: String,
    rpath: &ResourcePath,
    reason: &str,
    details: Vec<String>,
) {
    record(
        s,
        Denial {
            at: now(),
            kind: "resource".into(),
            tee: Some(tee),
            resource: Some(rpath.to_string()),
            reason: reason.into(),
            details,
        },
    );
}

async fn get_resource(
    State(s): State<AppState>,
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    let rpath = ResourcePath::parse(&path).map_err(|e| KbsError::InvalidPath(e.to_string()))?;
    if query.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > MAX_QUERY_BYTES {
        return Err(KbsError::BadRequest(format!(
            "the query string is longer than {MAX_QUERY_BYTES} bytes"
        )));
    }
    let (token, tee) = presented_token(&s, &headers)?;
    let decision = match decide(&s, &token, &rpath, &query) {
        Ok(d) => d,
        Err(e) => {
            if let KbsError::Unavailable { detail } = &e {
                let reason = "the resource policy could not be evaluated";
                record_resource_denial(&s, tee, &rpath, reason, vec![detail.clone()]);
            }
            return Err(e);
        }
    };
    if !decision.allow {
        s.metrics
            .releases
            .get_or_create(&ReleaseLabels {
                result: "denied".into(),
            })
            .inc();
        let reasons = decision.reasons.as_ref().clone();
        record_resource_denial(
            &s,
            tee,
            &rpath,
            "resource policy denied the request",
            reasons,
        );
        return Err(KbsError::PolicyDeny(rpath.to_string()));
    }
    let key = rpath.to_string();
    let Some(sealed) = s.store.get(ns::RESOURCES, &key)? else {
        s.metrics
            .releases
            .get_or_create(&ReleaseLabels {
                result: "not_found".into(),
            })
            .inc();
        return Err(KbsError::ResourceNotFound(key));
    };
    let plain = s
        .kek
        .open(ns::RESOURCES, &key, &sealed)
        .map_err(|e| match e {
            // The token is unreachable: worth a retry.
            cocoon_store::KekError::Token(d) => KbsError::Unavailable {
                detail: format!("resource {key} cannot be unsealed now: {d}"),
            },
            _ => KbsError::Internal(format!(
                "resource {key} cannot be unsealed: wrong key-encryption key or tampered database"
            )),
        })?;
    let jwe = token
        .sealing
        .seal(&plain)
        .map_err(|e| KbsError::Internal(e.to_string()))?;
    s.metrics
        .releases
        .get_or_create(&ReleaseLabels {
            result: "released".into(),
        })
        .inc();
    s.audit.record(crate::audit::Entry::new(
        "release",
        json!({"resource": key, "tee": tee, "token_sha256": hex::encode(token.digest)}),
    ));
    Ok(Json(jwe).into_response())
}

async fn set_resource(
    State(s): State<AppState>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    let body = body_bytes(body)?;
    let rpath = ResourcePath::parse(&path).map_err(|e| KbsError::InvalidPath(e.to_string()))?;
    let key = rpath.to_string();
    let sealed = s
        .kek
        .seal(ns::RESOURCES, &key, &body)
        .map_err(|e| KbsError::Unavailable {
            detail: format!("cannot seal resource {key}: {e}"),
        })?;
    s.store.put(ns::RESOURCES, &key, &sealed)?;
    tracing::info!(resource = %key, bytes = body.len(), "resource stored");
    Ok(StatusCode::OK.into_response())
}

async fn delete_resource(
    State(s): State<AppState>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    let rpath = ResourcePath::parse(&path).map_err(|e| KbsError::InvalidPath(e.to_string()))?;
    if !s.store.delete(ns::RESOURCES, &rpath.to_string())? {
        return Err(KbsError::ResourceNotFound(rpath.to_string()));
    }
    tracing::info!(resource = %rpath, "resource deleted");
    Ok(StatusCode::OK.into_response())
}

async fn list_resources(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    Ok(Json(s.store.list(ns::RESOURCES)?).into_response())
}

fn decode_policy(b64: &str) -> Result<String, KbsError> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .map_err(|_| KbsError::InvalidPolicy("policy must be base64url-encoded Rego".into()))?;
    String::from_utf8(raw).map_err(|_| KbsError::InvalidPolicy("policy is not UTF-8".into()))
}

#[derive(Deserialize)]
struct PolicyBody {
    policy: String,
    #[serde(default)]
    policy_id: Option<String>,
}

fn set_policy_text(s: &KbsState, id: &str, text: &str) -> Result<Response, KbsError> {
    s.attestation
        .policies()
        .set(id, text)
        .map_err(|e| policy_error(&e, KbsError::InvalidPolicy))?;
    tracing::info!(policy = id, "policy updated");
    Ok(StatusCode::OK.into_response())
}

async fn set_resource_policy(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    let b: PolicyBody = parse_json(&body_bytes(body)?, "{\"policy\": \"<base64url Rego>\"}")?;
    set_policy_text(&s, RESOURCE_POLICY, &decode_policy(&b.policy)?)
}

async fn get_resource_policy(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    let ids = s
        .attestation
        .policies()
        .ids()
        .map_err(|e| policy_error(&e, KbsError::Internal))?;
    Ok(Json(ids).into_response())
}

async fn set_attestation_policy(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    let b: PolicyBody = parse_json(
        &body_bytes(body)?,
        "{\"policy_id\": \"default_cpu\", \"policy\": \"<base64url Rego>\"}",
    )?;
    // The KBS looks up `default_<class>`; a plain `default` means the CPU policy.
    let id = match b.policy_id.as_deref() {
        None | Some("default") => "default_cpu".to_string(),
        Some(id) => id.to_string(),
    };
    if id == RESOURCE_POLICY {
        return Err(KbsError::InvalidPolicy(
            "use POST /kbs/v0/resource-policy for the resource policy".into(),
        ));
    }
    set_policy_text(&s, &id, &decode_policy(&b.policy)?)
}

async fn list_policies(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    get_resource_policy(State(s), headers).await
}

async fn get_policy(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    match s
        .attestation
        .policies()
        .text(&id)
        .map_err(|e| policy_error(&e, KbsError::Internal))?
    {
        Some(t) => Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], t).into_response()),
        None => Err(KbsError::NotFound(format!("policy '{id}'"))),
    }
}

async fn register_reference_values(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    let body = body_bytes(body)?;
    let names = s
        .rvps
        .register_message(&body)
        .map_err(|e| rvps_error(e, KbsError::InvalidReferenceValue))?;
    tracing::info!(?names, "reference values registered");
    Ok(StatusCode::OK.into_response())
}

#[derive(Deserialize)]
struct PutReferenceValue {
    value: Value,
    #[serde(default)]
    expires: Option<i64>,
}

async fn put_reference_value(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    let b: PutReferenceValue = parse_json(
        &body_bytes(body)?,
        "{\"value\": <JSON>, \"expires\": <unix seconds>}",
    )?;
    let expires = match b.expires {
        Some(t) => Some(
            time::OffsetDateTime::from_unix_timestamp(t)
                .map_err(|_| KbsError::InvalidReferenceValue("expires is out of range".into()))?,
        ),
        None => None,
    };
    let rv = s
        .rvps
        .add(&name, b.value, expires)
        .map_err(|e| rvps_error(e, KbsError::InvalidReferenceValue))?;
    tracing::info!(name = %name, "reference value set");
    Ok(Json(rv).into_response())
}

async fn get_reference_value(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    match s
        .rvps
        .query(&name)
        .map_err(|e| rvps_error(e, KbsError::Internal))?
    {
        Some(v) => Ok(Json(v).into_response()),
        None => Err(KbsError::NotFound(format!(
            "reference value '{name}' (missing or expired)"
        ))),
    }
}

async fn delete_reference_value(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    if !s
        .rvps
        .delete(&name)
        .map_err(|e| rvps_error(e, KbsError::Internal))?
    {
        return Err(KbsError::NotFound(format!("reference value '{name}'")));
    }
    Ok(StatusCode::OK.into_response())
}

async fn list_reference_values(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    Ok(Json(
        s.rvps
            .list()
            .map_err(|e| rvps_error(e, KbsError::Internal))?,
    )
    .into_response())
}

#[derive(Deserialize)]
struct DenialQuery {
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_denials(
    State(s): State<AppState>,
    Query(q): Query<DenialQuery>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    let events = s
        .store
        .recent(ns::DENIALS, q.limit.unwrap_or(20).min(DENIALS_KEPT))?;
    let list: Vec<Denial> = events
        .iter()
        .filter_map(|e| serde_json::from_slice(&e.value).ok())
        .collect();
    Ok(Json(list).into_response())
}

#[derive(Deserialize)]
struct RotateQuery {
    #[serde(default)]
    drop_old: bool,
}

async fn rotate_session_key(
    State(s): State<AppState>,
    Query(q): Query<RotateQuery>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    Ok(Json(s.sessions.rotate(q.drop_old)?).into_response())
}

async fn list_session_keys(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    Ok(Json(s.sessions.keys()?).into_response())
}

async fn jwks(State(s): State<AppState>) -> Response {
    Json(s.attestation.signer().jwks()).into_response()
}

/// Records every admin change (any write to an admin route, allowed or
/// not) with its route and outcome; the guest's own writes (`auth`,
/// `attest`, the TPM enrollment) are recorded by what they lead to.
/// Reads the request's body within its deadline first
/// ([`crate::limits::body_in_time`]), so a write refused for its body's
/// size or slowness is recorded like any other.
async fn audit_admin(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let write = !matches!(method, axum::http::Method::GET | axum::http::Method::HEAD);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let guest = ["/auth", "/attest", "/tpm/ek-challenge", "/tpm/ek-activate"]
        .iter()
        .any(|g| route.ends_with(g));
    // The path under the protocol's prefix, as the records have always named it.
    let full = req.uri().path();
    let path = full
        .strip_prefix(cocoon_types::KBS_PREFIX)
        .unwrap_or(full)
        .to_string();
    // Which admin key signed the request (whether or not it was allowed).
    let token = (write && !guest).then(|| bearer(req.headers())).flatten();
    let signer = |keys: &[AdminKey]| {
        token
            .and_then(|t| crate::admin::signer_of(t, keys))
            .map(|i| crate::admin::fingerprint(&keys[i]))
    };
    let (admin, auditor) = (signer(&s.admin_keys), signer(&s.auditor_keys));
    let resp = match crate::limits::body_in_time(&s, req).await {
        Ok(req) => next.run(req).await,
        Err(refused) => refused,
    };
    if write && !guest && !route.is_empty() {
        let mut fields = json!({"method": method.as_str(), "route": route, "path": path,
                                "status": resp.status().as_u16(), "admin_key": admin});
        // An auditor's key, refused for anything but reading the log.
        if let Some(a) = auditor {
            fields["auditor_key"] = a.into();
        }
        s.audit.record(crate::audit::Entry::new("admin", fields));
    }
    resp
}

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default = "one")]
    from: i64,
    #[serde(default = "page")]
    limit: usize,
}

fn one() -> i64 {
    1
}

fn page() -> usize {
    1000
}

/// Audit records from `from` on (at most `limit`, 10000), each as its
/// exact stored text (the hash chain is over those bytes).
async fn audit_records(
    State(s): State<AppState>,
    Query(q): Query<AuditQuery>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    require_auditor(&s, &headers)?;
    let store = s.store.clone();
    let (rows, last) = tokio::task::spawn_blocking(move || {
        let rows = store.audit_range(q.from.max(1), q.limit.min(10_000))?;
        Ok::<_, cocoon_store::StoreError>((rows, store.audit_last()?))
    })
    .await
    .map_err(|e| KbsError::Internal(e.to_string()))??;
    let records: Vec<Value> = rows
        .into_iter()
        .map(|(seq, bytes)| json!({"seq": seq, "record": String::from_utf8_lossy(&bytes)}))
        .collect();
    // The newest record's number, so a client can start from the end.
    Ok(Json(json!({ "records": records, "last": last })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneBody {
    before: u64,
}

/// Removes the audit records before the newest checkpoint at or before
/// record `before` (after writing a signed `prune` record naming it).
async fn audit_prune(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    let b: PruneBody = parse_json(&body_bytes(body)?, "{\"before\": <record number>}")?;
    let audit = s.audit.clone();
    let (first, removed) = tokio::task::spawn_blocking(move || audit.prune(b.before))
        .await
        .map_err(|e| KbsError::Internal(e.to_string()))?
        .map_err(|e| match e {
            crate::audit::PruneError::Nothing(why) | crate::audit::PruneError::Tampered(why) => {
                KbsError::BadRequest(why)
            }
            crate::audit::PruneError::Store(e) => e.into(),
        })?;
    tracing::info!(first, removed, "audit log pruned");
    Ok(Json(json!({"first": first, "removed": removed})).into_response())
}

/// The audit key's public half (PEM), for `cocoon audit verify`.
async fn audit_public_key(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    require_auditor(&s, &headers)?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        s.audit.public_key_pem(),
    )
        .into_response())
}

/// Ready when the database answers (a round trip within 2 s, past any cache): a load balancer
/// sends no guest to a replica that could not decide for it.
async fn readyz(State(s): State<AppState>) -> Response {
    if s.audit.behind() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the audit log is far behind\n",
        )
            .into_response();
    }
    let store = s.store.clone();
    let probe = tokio::task::spawn_blocking(move || store.ping());
    match tokio::time::timeout(std::time::Duration::from_secs(2), probe).await {
        Ok(Ok(Ok(_))) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "readiness: the store does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the store does not answer\n",
            )
                .into_response()
        }
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the store did not answer within 2 s\n",
        )
            .into_response(),
    }
}

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn not_found(req: Request) -> KbsError {
    KbsError::NotFound(req.uri().path().to_string())
}

/// The outermost middleware: the per-client rate limit of writes, then
/// each request's latency and status in the metrics.
async fn track(
    State((s, limiter)): State<(AppState, Arc<crate::limits::RateLimiter>)>,
    req: Request,
    next: Next,
) -> Response {
    // Refused before anything else (not counted in the metrics).
    if let Some(refused) = crate::limits::over_rate(&limiter, &req) {
        return refused;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    s.metrics
        .latency
        .get_or_create(&RouteOnly {
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    s.metrics
        .requests
        .get_or_create(&RouteLabels { route, status })
        .inc();
    resp
}

/// The router with every endpoint. The KBS routes carry the protocol's
/// prefix themselves (a nested router would strip it from every request).
pub fn router(state: AppState, limiter: Arc<crate::limits::RateLimiter>) -> Router {
    let kbs = |path: &str| format!("{}{path}", cocoon_types::KBS_PREFIX);
    Router::new()
        .route(&kbs("/auth"), post(auth))
        .route(&kbs("/attest"), post(attest))
        .route(
            &kbs("/resource/{*path}"),
            get(get_resource).post(set_resource).delete(delete_resource),
        )
        .route(&kbs("/resources"), get(list_resources))
        .route(
            &kbs("/resource-policy"),
            post(set_resource_policy).get(get_resource_policy),
        )
        .route(&kbs("/attestation-policy"), post(set_attestation_policy))
        .route(&kbs("/policies"), get(list_policies))
        .route(&kbs("/policies/{id}"), get(get_policy))
        .route(&kbs("/reference-value"), post(register_reference_values))
        .route(
            &kbs("/reference-value/{name}"),
            get(get_reference_value)
                .put(put_reference_value)
                .delete(delete_reference_value),
        )
        .route(&kbs("/reference-values"), get(list_reference_values))
        .route(&kbs("/denials"), get(list_denials))
        .route(&kbs("/session-keys"), get(list_session_keys))
        .route(&kbs("/session-keys/rotate"), post(rotate_session_key))
        .route(&kbs("/tpm-ak"), post(crate::tpm_aks::add_tpm_ak))
        .route(
            &kbs("/tpm/ek-challenge"),
            post(crate::tpm_aks::ek_challenge),
        )
        .route(&kbs("/tpm/ek-activate"), post(crate::tpm_aks::ek_activate))
        .route(&kbs("/tpm-aks"), get(crate::tpm_aks::list_tpm_aks))
        .route(
            &kbs("/tpm-ak/{fingerprint}"),
            axum::routing::delete(crate::tpm_aks::delete_tpm_ak),
        )
        .route(&kbs("/audit"), get(audit_records))
        .route(&kbs("/audit/public-key"), get(audit_public_key))
        .route(&kbs("/audit/prune"), post(audit_prune))
        // The KBS routes above only.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit_admin,
        ))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { KbsError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            (state.clone(), limiter),
            track,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}
