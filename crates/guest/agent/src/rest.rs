//! The workload REST API (CoCo's api-server-rest) on 127.0.0.1: resources
//! from the data hub and tokens/evidence from the attestation agent, for
//! containers that do not speak ttrpc. Non-loopback peers get 403.

use crate::AgentError;
use crate::services::{AaClient, CdhClient};
use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Default listen address (CoCo's).
pub const DEFAULT_BIND: &str = "127.0.0.1:8006";

/// Which endpoint groups to serve (CoCo's `--features`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Features {
    /// `/cdh/resource/...` only (default).
    Resource,
    /// `/aa/...` only.
    Attestation,
    /// Both.
    All,
}

/// Backends of the REST API: the sockets of the attestation agent and the
/// data hub. A connection is made per request, so either service may start
/// later or restart without the REST API noticing.
pub struct RestBackends {
    /// Attestation agent socket.
    pub aa: Option<String>,
    /// Data hub socket.
    pub cdh: Option<String>,
    /// Which endpoints are on.
    pub features: Features,
}

type St = Arc<RestBackends>;

fn fail(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, msg.into()).into_response()
}

fn backend_err(e: AgentError) -> Response {
    tracing::warn!(error = %e, "REST request failed");
    fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn octets(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
}

async fn resource(
    State(s): State<St>,
    Path((repo, ty, tag)): Path<(String, String, String)>,
) -> Response {
    let Some(addr) = s
        .cdh
        .as_ref()
        .filter(|_| s.features != Features::Attestation)
    else {
        return fail(StatusCode::NOT_FOUND, "resource endpoints are disabled");
    };
    let cdh = match CdhClient::connect(addr).await {
        Ok(c) => c,
        Err(e) => return backend_err(e),
    };
    match cdh.get_resource(&format!("kbs:///{repo}/{ty}/{tag}")).await {
        Ok(r) => octets(r.to_vec()),
        Err(e) => backend_err(e),
    }
}

/// A client of the attestation agent, or the response to send instead.
async fn aa(s: &RestBackends) -> Result<AaClient, Box<Response>> {
    let Some(addr) = s.aa.as_ref().filter(|_| s.features != Features::Resource) else {
        return Err(Box::new(fail(
            StatusCode::NOT_FOUND,
            "attestation endpoints are disabled",
        )));
    };
    AaClient::connect(addr)
        .await
        .map_err(|e| Box::new(backend_err(e)))
}

async fn token(State(s): State<St>, Query(q): Query<HashMap<String, String>>) -> Response {
    let aa = match aa(&s).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let Some(kind) = q.get("token_type") else {
        return fail(StatusCode::BAD_REQUEST, "missing token_type parameter");
    };
    match aa.token(kind).await {
        Ok(t) => octets(t),
        Err(e) => backend_err(e),
    }
}

async fn evidence(State(s): State<St>, Query(q): Query<HashMap<String, String>>) -> Response {
    let aa = match aa(&s).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let Some(rd) = q.get("runtime_data") else {
        return fail(StatusCode::BAD_REQUEST, "missing runtime_data parameter");
    };
    let rd = if q.get("encoding").map(String::as_str) == Some("base64") {
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(rd.trim_end_matches('=')) {
            Ok(b) => b,
            Err(_) => return fail(StatusCode::BAD_REQUEST, "runtime_data is not base64url"),
        }
    } else {
        rd.as_bytes().to_vec()
    };
    match aa.evidence(&rd).await {
        Ok(e) => octets(e),
        Err(e) => backend_err(e),
    }
}

#[derive(serde::Deserialize)]
struct AaelRequest {
    domain: String,
    operation: String,
    content: String,
}

async fn aael(State(s): State<St>, body: axum::body::Bytes) -> Response {
    let aa = match aa(&s).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let Ok(req) = serde_json::from_slice::<AaelRequest>(&body) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "body must be {\"domain\", \"operation\", \"content\"}",
        );
    };
    let out = match aa
        .extend(&req.domain, &req.operation, &req.content, None)
        .await
    {
        Ok(()) => serde_json::json!({"success": "true"}),
        Err(e) => serde_json::json!({"success": "false", "message": e.to_string()}),
    };
    axum::Json(out).into_response()
}

async fn info(State(s): State<St>) -> Response {
    let tee = match s.aa.as_deref() {
        Some(addr) => match AaClient::connect(addr).await {
            Ok(a) => a.tee().await.ok(),
            Err(_) => None,
        },
        None => None,
    };
    axum::Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "tee": tee,
        "feature": format!("{:?}", s.features).to_lowercase(),
    }))
    .into_response()
}

async fn loopback_only(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if !peer.ip().is_loopback() {
        return fail(
            StatusCode::FORBIDDEN,
            "only local workloads may call this API",
        );
    }
    next.run(req).await
}

/// The REST router.
pub fn router(b: RestBackends) -> Router {
    Router::new()
        .route("/info", get(info))
        .route("/cdh/resource/{repo}/{ty}/{tag}", get(resource))
        .route("/aa/token", get(token))
        .route("/aa/evidence", get(evidence))
        .route("/aa/aael", post(aael))
        .layer(axum::middleware::from_fn(loopback_only))
        .with_state(Arc::new(b))
}

/// Serves the REST API on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, b: RestBackends) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(b).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
