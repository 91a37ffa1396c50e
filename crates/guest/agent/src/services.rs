//! The CoCo ttrpc APIs over Unix sockets: the Attestation Agent service
//! (`attestation_agent.AttestationAgentService`) and the Confidential Data
//! Hub services (`api.GetResourceService`, `api.SealedSecretService`,
//! `api.ImagePullService`), with
//! small clients for the data hub, the REST API and tools.

use crate::AgentError;
use crate::aa::AttestationAgent;
use crate::cdh::DataHub;
use cocoon_guest_protos::api::{
    GetResourceRequest, GetResourceResponse, ImagePullRequest, ImagePullResponse,
    SecureMountRequest, SecureMountResponse, UnsealSecretInput, UnsealSecretOutput,
};
use cocoon_guest_protos::api_ttrpc::{
    GetResourceService, GetResourceServiceClient, ImagePullService, ImagePullServiceClient,
    SealedSecretService, SealedSecretServiceClient, SecureMountService,
    create_get_resource_service, create_image_pull_service, create_sealed_secret_service,
    create_secure_mount_service,
};
use cocoon_guest_protos::attestation_agent::*;
use cocoon_guest_protos::attestation_agent_ttrpc::{
    AttestationAgentService, AttestationAgentServiceClient, create_attestation_agent_service,
};
use cocoon_guest_protos::pod::{
    PullResolvedImageRequest, PullResolvedImageResponse, ResolveImageRequest, ResolveImageResponse,
};
use cocoon_guest_protos::pod_ttrpc::{ImageResolve, ImageResolveClient, create_image_resolve};
use std::sync::Arc;
use ttrpc::r#async::{Server, TtrpcContext};
use ttrpc::{Code, get_status};

/// Default AA socket (CoCo's path).
pub const DEFAULT_AA_SOCKET: &str =
    "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock";
/// Default CDH socket (CoCo's path).
pub const DEFAULT_CDH_SOCKET: &str = "unix:///run/confidential-containers/cdh.sock";

/// Client-side timeout of one call (attestation may retry a slow KBS).
const CALL_TIMEOUT_NS: i64 = 120 * 1_000_000_000;
/// Client-side timeout of an image pull.
const PULL_TIMEOUT_NS: i64 = 30 * 60 * 1_000_000_000;

fn status(e: &AgentError) -> ttrpc::Error {
    let code = match e {
        AgentError::BadRequest(_)
        | AgentError::Sealed(_)
        | AgentError::InitData(_)
        | AgentError::Event(_)
        | AgentError::Attester(cocoon_attester::AttesterError::ReportDataTooLong(_)) => {
            Code::INVALID_ARGUMENT
        }
        AgentError::Kbs(k) if k.status().is_some() => Code::PERMISSION_DENIED,
        AgentError::Kbs(cocoon_kbs_client::ClientError::Unreachable { .. }) => Code::UNAVAILABLE,
        AgentError::Image(p) => {
            use cocoon_image::pull::PullError;
            use cocoon_image::registry::RegistryError;
            match p {
                PullError::Policy(_) | PullError::Decrypt(_) | PullError::HmacMismatch(_) => {
                    Code::PERMISSION_DENIED
                }
                PullError::Registry(RegistryError::NotFound { .. }) => Code::NOT_FOUND,
                PullError::Registry(RegistryError::Unreachable { .. }) => Code::UNAVAILABLE,
                PullError::Unpack { .. } | PullError::Manifest { .. } => Code::FAILED_PRECONDITION,
                _ => Code::INTERNAL,
            }
        }
        _ => Code::INTERNAL,
    };
    ttrpc::Error::RpcStatus(get_status(code, e.to_string()))
}

fn log_err(method: &str, e: AgentError) -> ttrpc::Error {
    tracing::warn!(method, error = %e, "request failed");
    status(&e)
}

struct AaService(Arc<AttestationAgent>);

#[async_trait::async_trait]
impl AttestationAgentService for AaService {
    async fn get_evidence(
        &self,
        _: &TtrpcContext,
        req: GetEvidenceRequest,
    ) -> ttrpc::Result<GetEvidenceResponse> {
        let ev = self
            .0
            .evidence(&req.RuntimeData)
            .await
            .map_err(|e| log_err("GetEvidence", e))?;
        Ok(GetEvidenceResponse {
            Evidence: ev,
            ..Default::default()
        })
    }

    async fn get_additional_evidence(
        &self,
        _: &TtrpcContext,
        _: GetAdditionalEvidenceRequest,
    ) -> ttrpc::Result<GetEvidenceResponse> {
        // No attached devices: CoCo answers with empty evidence too.
        Ok(GetEvidenceResponse::default())
    }

    async fn get_token(
        &self,
        _: &TtrpcContext,
        req: GetTokenRequest,
    ) -> ttrpc::Result<GetTokenResponse> {
        let token = self
            .0
            .token(&req.TokenType)
            .await
            .map_err(|e| log_err("GetToken", e))?;
        Ok(GetTokenResponse {
            Token: token,
            ..Default::default()
        })
    }

    async fn extend_runtime_measurement(
        &self,
        _: &TtrpcContext,
        req: ExtendRuntimeMeasurementRequest,
    ) -> ttrpc::Result<ExtendRuntimeMeasurementResponse> {
        self.0
            .extend_runtime_measurement(
                &req.Domain,
                &req.Operation,
                &req.Content,
                req.RegisterIndex,
            )
            .await
            .map_err(|e| log_err("ExtendRuntimeMeasurement", e))?;
        Ok(ExtendRuntimeMeasurementResponse::default())
    }

    async fn bind_init_data(
        &self,
        _: &TtrpcContext,
        req: BindInitDataRequest,
    ) -> ttrpc::Result<BindInitDataResponse> {
        self.0
            .bind_init_data(&req.Digest)
            .await
            .map_err(|e| log_err("BindInitData", e))?;
        Ok(BindInitDataResponse::default())
    }

    async fn get_tee_type(
        &self,
        _: &TtrpcContext,
        _: GetTeeTypeRequest,
    ) -> ttrpc::Result<GetTeeTypeResponse> {
        Ok(GetTeeTypeResponse {
            tee: self.0.tee().to_string(),
            ..Default::default()
        })
    }
}

struct CdhService(Arc<DataHub>);

#[async_trait::async_trait]
impl GetResourceService for CdhService {
    async fn get_resource(
        &self,
        _: &TtrpcContext,
        req: GetResourceRequest,
    ) -> ttrpc::Result<GetResourceResponse> {
        let r = self
            .0
            .get_resource(&req.ResourcePath)
            .await
            .map_err(|e| log_err("GetResource", e))?;
        tracing::info!(resource = %req.ResourcePath, "resource released to a guest client");
        Ok(GetResourceResponse {
            Resource: r.to_vec(),
            ..Default::default()
        })
    }
}

#[async_trait::async_trait]
impl SealedSecretService for CdhService {
    async fn unseal_secret(
        &self,
        _: &TtrpcContext,
        req: UnsealSecretInput,
    ) -> ttrpc::Result<UnsealSecretOutput> {
        let p = self
            .0
            .unseal(&req.secret)
            .await
            .map_err(|e| log_err("UnsealSecret", e))?;
        Ok(UnsealSecretOutput {
            plaintext: p.to_vec(),
            ..Default::default()
        })
    }
}

#[async_trait::async_trait]
impl SecureMountService for CdhService {
    async fn secure_mount(
        &self,
        _: &TtrpcContext,
        req: SecureMountRequest,
    ) -> ttrpc::Result<SecureMountResponse> {
        Err(ttrpc::Error::RpcStatus(get_status(
            Code::UNIMPLEMENTED,
            format!(
                "secure mount of '{}' volumes is not implemented",
                req.volume_type
            ),
        )))
    }
}

impl CdhService {
    /// A pull for either pull service, its failure logged.
    async fn pull(
        &self,
        image: &str,
        bundle: &str,
        expected: Option<&str>,
    ) -> ttrpc::Result<String> {
        self.0
            .pull_image_expecting(image, std::path::Path::new(bundle), expected)
            .await
            .map_err(|e| {
                tracing::warn!(image = %image, error = %e, "image pull failed");
                status(&e)
            })
    }
}

#[async_trait::async_trait]
impl ImagePullService for CdhService {
    async fn pull_image(
        &self,
        _: &TtrpcContext,
        req: ImagePullRequest,
    ) -> ttrpc::Result<ImagePullResponse> {
        let digest = self.pull(&req.image_url, &req.bundle_path, None).await?;
        Ok(ImagePullResponse {
            manifest_digest: digest,
            ..Default::default()
        })
    }
}

#[async_trait::async_trait]
impl ImageResolve for CdhService {
    async fn resolve_image(
        &self,
        _: &TtrpcContext,
        req: ResolveImageRequest,
    ) -> ttrpc::Result<ResolveImageResponse> {
        let digest = self.0.resolve_image(&req.image_url).await.map_err(|e| {
            tracing::warn!(image = %req.image_url, error = %e, "image resolution failed");
            status(&e)
        })?;
        Ok(ResolveImageResponse {
            manifest_digest: digest,
            ..Default::default()
        })
    }

    async fn pull_resolved_image(
        &self,
        _: &TtrpcContext,
        req: PullResolvedImageRequest,
    ) -> ttrpc::Result<PullResolvedImageResponse> {
        let digest = self
            .pull(&req.image_url, &req.bundle_path, Some(&req.manifest_digest))
            .await?;
        Ok(PullResolvedImageResponse {
            manifest_digest: digest,
            ..Default::default()
        })
    }
}

fn prepare_socket(addr: &str) -> Result<(), AgentError> {
    if let Some(path) = addr.strip_prefix("unix://").filter(|p| !p.starts_with('@')) {
        let p = std::path::Path::new(path);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| AgentError::Config(format!("cannot create {}: {e}", dir.display())))?;
        }
        // A stale socket from a previous run would make bind fail.
        let _ = std::fs::remove_file(p);
    } else if !addr.starts_with("unix://") {
        return Err(AgentError::Config(format!(
            "socket address '{addr}' must be unix:///path or unix://@abstract"
        )));
    }
    Ok(())
}

/// Binds the AA service on `addr` (`unix:///path`).
pub fn aa_server(addr: &str, aa: Arc<AttestationAgent>) -> Result<Server, AgentError> {
    prepare_socket(addr)?;
    let svc: Arc<dyn AttestationAgentService + Send + Sync> = Arc::new(AaService(aa));
    Ok(Server::new()
        .bind(addr)
        .map_err(|e| AgentError::Config(format!("cannot listen on {addr}: {e}")))?
        .register_service(create_attestation_agent_service(svc)))
}

/// Binds the CDH services on `addr`.
pub fn cdh_server(addr: &str, hub: Arc<DataHub>) -> Result<Server, AgentError> {
    prepare_socket(addr)?;
    let res: Arc<dyn GetResourceService + Send + Sync> = Arc::new(CdhService(hub.clone()));
    let sealed: Arc<dyn SealedSecretService + Send + Sync> = Arc::new(CdhService(hub.clone()));
    let mount: Arc<dyn SecureMountService + Send + Sync> = Arc::new(CdhService(hub.clone()));
    let pull: Arc<dyn ImagePullService + Send + Sync> = Arc::new(CdhService(hub.clone()));
    let resolve: Arc<dyn ImageResolve + Send + Sync> = Arc::new(CdhService(hub));
    Ok(Server::new()
        .bind(addr)
        .map_err(|e| AgentError::Config(format!("cannot listen on {addr}: {e}")))?
        .register_service(create_get_resource_service(res))
        .register_service(create_sealed_secret_service(sealed))
        .register_service(create_secure_mount_service(mount))
        .register_service(create_image_pull_service(pull))
        .register_service(create_image_resolve(resolve)))
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(CALL_TIMEOUT_NS)
}

fn rpc_err(what: &str, e: ttrpc::Error) -> AgentError {
    match e {
        ttrpc::Error::RpcStatus(s) => AgentError::Remote(format!("{what}: {}", s.message())),
        other => AgentError::Remote(format!("{what}: {other}")),
    }
}

/// A client of an Attestation Agent.
#[derive(Clone)]
pub struct AaClient(AttestationAgentServiceClient);

impl AaClient {
    /// Connects to `addr` (`unix:///path`).
    pub async fn connect(addr: &str) -> Result<Self, AgentError> {
        let c = ttrpc::r#async::Client::connect(addr).await.map_err(|e| {
            AgentError::Remote(format!(
                "cannot connect to the attestation agent at {addr}: {e}"
            ))
        })?;
        Ok(Self(AttestationAgentServiceClient::new(c)))
    }

    /// GetEvidence.
    pub async fn evidence(&self, runtime_data: &[u8]) -> Result<Vec<u8>, AgentError> {
        let req = GetEvidenceRequest {
            RuntimeData: runtime_data.to_vec(),
            ..Default::default()
        };
        Ok(self
            .0
            .get_evidence(ctx(), &req)
            .await
            .map_err(|e| rpc_err("GetEvidence", e))?
            .Evidence)
    }

    /// GetToken.
    pub async fn token(&self, kind: &str) -> Result<Vec<u8>, AgentError> {
        let req = GetTokenRequest {
            TokenType: kind.into(),
            ..Default::default()
        };
        Ok(self
            .0
            .get_token(ctx(), &req)
            .await
            .map_err(|e| rpc_err("GetToken", e))?
            .Token)
    }

    /// GetTeeType.
    pub async fn tee(&self) -> Result<String, AgentError> {
        Ok(self
            .0
            .get_tee_type(ctx(), &GetTeeTypeRequest::default())
            .await
            .map_err(|e| rpc_err("GetTeeType", e))?
            .tee)
    }

    /// ExtendRuntimeMeasurement.
    pub async fn extend(
        &self,
        domain: &str,
        operation: &str,
        content: &str,
        register: Option<u64>,
    ) -> Result<(), AgentError> {
        let req = ExtendRuntimeMeasurementRequest {
            Domain: domain.into(),
            Operation: operation.into(),
            Content: content.into(),
            RegisterIndex: register,
            ..Default::default()
        };
        self.0
            .extend_runtime_measurement(ctx(), &req)
            .await
            .map_err(|e| rpc_err("ExtendRuntimeMeasurement", e))?;
        Ok(())
    }
}

/// A client of a Confidential Data Hub.
#[derive(Clone)]
pub struct CdhClient {
    resources: GetResourceServiceClient,
    sealed: SealedSecretServiceClient,
    images: ImagePullServiceClient,
    resolve: ImageResolveClient,
}

impl CdhClient {
    /// Connects to `addr` (`unix:///path`).
    pub async fn connect(addr: &str) -> Result<Self, AgentError> {
        let c = ttrpc::r#async::Client::connect(addr).await.map_err(|e| {
            AgentError::Remote(format!("cannot connect to the data hub at {addr}: {e}"))
        })?;
        Ok(Self {
            resources: GetResourceServiceClient::new(c.clone()),
            sealed: SealedSecretServiceClient::new(c.clone()),
            images: ImagePullServiceClient::new(c.clone()),
            resolve: ImageResolveClient::new(c),
        })
    }

    /// PullImage: the hub pulls `image` into `bundle`; returns the manifest digest.
    pub async fn pull_image(&self, image: &str, bundle: &str) -> Result<String, AgentError> {
        let req = ImagePullRequest {
            image_url: image.into(),
            bundle_path: bundle.into(),
            ..Default::default()
        };
        // A large image can take far longer than a resource request.
        let ctx = ttrpc::context::with_timeout(PULL_TIMEOUT_NS);
        Ok(self
            .images
            .pull_image(ctx, &req)
            .await
            .map_err(|e| rpc_err("PullImage", e))?
            .manifest_digest)
    }

    /// ResolveImage: the digest a pull of `image` would report.
    pub async fn resolve_image(&self, image: &str) -> Result<String, AgentError> {
        let req = ResolveImageRequest {
            image_url: image.into(),
            ..Default::default()
        };
        // Registry logins may need an attestation first, as for a pull.
        let ctx = ttrpc::context::with_timeout(PULL_TIMEOUT_NS);
        Ok(self
            .resolve
            .resolve_image(ctx, &req)
            .await
            .map_err(|e| rpc_err("ResolveImage", e))?
            .manifest_digest)
    }

    /// PullResolvedImage: pulls `image` into `bundle` only if it still
    /// resolves to `digest`; returns the manifest digest.
    pub async fn pull_resolved_image(
        &self,
        image: &str,
        bundle: &str,
        digest: &str,
    ) -> Result<String, AgentError> {
        let req = PullResolvedImageRequest {
            image_url: image.into(),
            bundle_path: bundle.into(),
            manifest_digest: digest.into(),
            ..Default::default()
        };
        let ctx = ttrpc::context::with_timeout(PULL_TIMEOUT_NS);
        Ok(self
            .resolve
            .pull_resolved_image(ctx, &req)
            .await
            .map_err(|e| rpc_err("PullResolvedImage", e))?
            .manifest_digest)
    }

    /// GetResource.
    pub async fn get_resource(&self, uri: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, AgentError> {
        let req = GetResourceRequest {
            ResourcePath: uri.into(),
            ..Default::default()
        };
        Ok(zeroize::Zeroizing::new(
            self.resources
                .get_resource(ctx(), &req)
                .await
                .map_err(|e| rpc_err("GetResource", e))?
                .Resource,
        ))
    }

    /// UnsealSecret.
    pub async fn unseal(&self, secret: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, AgentError> {
        let req = UnsealSecretInput {
            secret: secret.to_vec(),
            ..Default::default()
        };
        Ok(zeroize::Zeroizing::new(
            self.sealed
                .unseal_secret(ctx(), &req)
                .await
                .map_err(|e| rpc_err("UnsealSecret", e))?
                .plaintext,
        ))
    }
}
