//! The agent's ttrpc services: `grpc.Health` now; `grpc.AgentService`
//! answers not-implemented for every call until containers run here.

use cocoon_guest_protos::kata::{agent_ttrpc, health, health_ttrpc};
use std::collections::HashMap;
use std::sync::Arc;
use ttrpc::r#async::TtrpcContext;

/// The agent API version we speak (Kata's agent.proto revision family).
pub const API_VERSION: &str = "0.0.1";

struct HealthService;

#[async_trait::async_trait]
impl health_ttrpc::Health for HealthService {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        let mut r = health::HealthCheckResponse::new();
        r.status = health::health_check_response::ServingStatus::SERVING.into();
        Ok(r)
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> ttrpc::Result<health::VersionCheckResponse> {
        let mut r = health::VersionCheckResponse::new();
        r.grpc_version = API_VERSION.into();
        r.agent_version = concat!("cocoon-guest ", env!("CARGO_PKG_VERSION")).into();
        Ok(r)
    }
}

struct Agent;

#[async_trait::async_trait]
impl agent_ttrpc::AgentService for Agent {}

/// The services the agent serves, by ttrpc service name.
pub fn services() -> HashMap<String, ttrpc::r#async::Service> {
    let mut s = health_ttrpc::create_health(Arc::new(Box::new(HealthService)));
    s.extend(agent_ttrpc::create_agent_service(Arc::new(Box::new(Agent))));
    s
}
