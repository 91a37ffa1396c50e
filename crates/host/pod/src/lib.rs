//! The host side of a confidential pod: a VM started by a
//! [`Hypervisor`](cocoon_hypervisor::Hypervisor) and the client of the
//! Kata agent API its PID 1 serves. Callers (`cocoon run`, the containerd
//! shim) use this; it never links the guest's secret-holding code.

pub mod container;
pub mod network;

use cocoon_guest_protos::kata::{agent_ttrpc, health, health_ttrpc};
use cocoon_guest_protos::pod_ttrpc;
use cocoon_hypervisor::{Hypervisor, Vm, VmError, VmExit, VmSpec};
use std::time::{Duration, Instant};

pub use cocoon_guest_protos::kata;

/// Why a pod failed.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The VM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The agent did not answer in time.
    #[error("the guest agent did not answer within {0:?} (see the console log)")]
    AgentTimeout(Duration),
    /// The VM ended before its agent answered.
    #[error("the VM ended before its agent answered ({0:?}; see the console log)")]
    VmEnded(VmExit),
    /// An agent call failed.
    #[error("agent {0}: {1}")]
    Agent(&'static str, String),
    /// The pod's network namespace could not be joined to the VM.
    #[error("pod network: {0}")]
    Network(String),
}

/// A client of the guest agent.
#[derive(Clone)]
pub struct AgentClient {
    /// `grpc.Health`.
    pub health: health_ttrpc::HealthClient,
    /// `grpc.AgentService`.
    pub agent: agent_ttrpc::AgentServiceClient,
    /// `cocoon.pod.PodNetwork`.
    pub network: pod_ttrpc::PodNetworkClient,
    /// `cocoon.pod.PodDiagnostics`.
    pub diagnostics: pod_ttrpc::PodDiagnosticsClient,
}

/// An agent error as the user reads it: the guest's message when the
/// agent answered, else the transport error.
pub fn describe(e: ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    }
}

/// A context whose deadline is `d` from now.
pub fn ctx(d: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(d.as_nanos().min(i64::MAX as u128) as i64)
}

impl AgentClient {
    /// Connects to `address` (`unix://@...`).
    pub async fn connect(address: &str) -> Result<Self, PodError> {
        let c = ttrpc::r#async::Client::connect(address)
            .await
            .map_err(|e| PodError::Agent("connect", e.to_string()))?;
        Ok(Self {
            health: health_ttrpc::HealthClient::new(c.clone()),
            agent: agent_ttrpc::AgentServiceClient::new(c.clone()),
            network: pod_ttrpc::PodNetworkClient::new(c.clone()),
            diagnostics: pod_ttrpc::PodDiagnosticsClient::new(c),
        })
    }

    /// The agent's memory: resident set size (current, peak, and by kind),
    /// KiB, and threads.
    pub async fn agent_stats(
        &self,
    ) -> Result<cocoon_guest_protos::pod::AgentStatsResponse, PodError> {
        self.diagnostics
            .agent_stats(
                ctx(Duration::from_secs(10)),
                &cocoon_guest_protos::pod::AgentStatsRequest::new(),
            )
            .await
            .map_err(|e| PodError::Agent("AgentStats", describe(e)))
    }

    /// The agent's version strings (API, build).
    pub async fn version(&self) -> Result<(String, String), PodError> {
        let v = self
            .health
            .version(ctx(Duration::from_secs(10)), &health::CheckRequest::new())
            .await
            .map_err(|e| PodError::Agent("Version", e.to_string()))?;
        Ok((v.grpc_version, v.agent_version))
    }
}

/// A running pod VM with a ready agent.
pub struct PodVm {
    vm: Box<dyn Vm>,
    /// The agent.
    pub agent: AgentClient,
    /// Time from start to the agent's first answer.
    pub boot_time: Duration,
}

impl PodVm {
    /// Starts a VM and waits (up to `timeout`) until its agent answers a
    /// health check.
    pub async fn start(
        hv: &dyn Hypervisor,
        spec: VmSpec,
        timeout: Duration,
    ) -> Result<Self, PodError> {
        let t0 = Instant::now();
        let vm = hv.start(spec).await?;
        match wait_ready(vm.as_ref(), t0, timeout).await {
            Ok(agent) => Ok(Self {
                vm,
                agent,
                boot_time: t0.elapsed(),
            }),
            Err(e) => {
                let _ = vm.stop().await;
                Err(e)
            }
        }
    }

    /// The VM.
    pub fn vm(&self) -> &dyn Vm {
        self.vm.as_ref()
    }

    /// Stops the VM and removes its state.
    pub async fn stop(self) -> Result<VmExit, PodError> {
        Ok(self.vm.stop().await?)
    }
}

/// Sends health checks until one is answered SERVING. Requests written
/// before the guest opens its port wait in the channel, so one check
/// usually spans the whole boot.
async fn wait_ready(vm: &dyn Vm, t0: Instant, timeout: Duration) -> Result<AgentClient, PodError> {
    let addr = vm.agent_address();
    loop {
        let left = timeout.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return Err(PodError::AgentTimeout(timeout));
        }
        let attempt = async {
            let c = AgentClient::connect(&addr).await?;
            let r = c
                .health
                .check(ctx(left), &health::CheckRequest::new())
                .await
                .map_err(|e| PodError::Agent("Check", e.to_string()))?;
            if r.status == health::health_check_response::ServingStatus::SERVING.into() {
                Ok(c)
            } else {
                Err(PodError::Agent("Check", "not serving".into()))
            }
        };
        tokio::select! {
            r = attempt => match r {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::debug!(error = %e, "agent not ready yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            exit = vm.wait() => return Err(PodError::VmEnded(exit)),
        }
    }
}
