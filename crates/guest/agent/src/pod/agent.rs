//! The agent's ttrpc services: `grpc.Health` and the `grpc.AgentService`
//! subset a pod needs (containers, processes, stdio, network). The other
//! calls answer UNIMPLEMENTED. Every request is first decided by the agent
//! policy ([`super::policy`]).

use super::net;
use super::policy::{Gate, SetPolicyError};
use super::sandbox::{Sandbox, SandboxError};
use cocoon_guest_protos::kata::{agent, agent_ttrpc, empty::Empty, health, health_ttrpc, types};
use cocoon_guest_protos::{pod, pod_ttrpc};
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

struct Agent {
    sandbox: Arc<Sandbox>,
    policy: Arc<Gate>,
}

/// The policy's decision on `req`, as the host gets a refusal:
/// PERMISSION_DENIED naming the rule and why.
fn allow(policy: &Gate, req: &dyn protobuf::MessageDyn) -> ttrpc::Result<()> {
    policy
        .check(req)
        .map_err(|d| status(SandboxError::Denied(d)))
}

fn status(e: SandboxError) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
}

/// A call outside the subset served: UNIMPLEMENTED, as a Kata shim
/// expects for an optional call.
fn unimplemented(call: &str) -> ttrpc::Error {
    status(SandboxError::Unsupported(format!(
        "{call} is not implemented by this agent"
    )))
}

fn logged(call: &'static str) -> impl Fn(SandboxError) -> ttrpc::Error {
    move |e| {
        tracing::warn!(call, "{e}");
        status(e)
    }
}

impl Agent {
    /// ReadStdout/ReadStderr. Output the policy refuses to show is still
    /// read (a process blocked on a full pipe would hang): it is dropped
    /// until the stream ends, and the host gets only the end (empty data).
    async fn read(
        &self,
        req: &agent::ReadStreamRequest,
        stderr: bool,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        let refused = self.policy.check(req).is_err();
        loop {
            let data = self
                .sandbox
                .read(&req.container_id, &req.exec_id, req.len, stderr)
                .await
                .map_err(status)?;
            if !refused || data.is_empty() {
                return Ok(agent::ReadStreamResponse {
                    data,
                    ..Default::default()
                });
            }
        }
    }
}

#[async_trait::async_trait]
impl agent_ttrpc::AgentService for Agent {
    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: agent::CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        net::set_hostname(&req.hostname).map_err(logged("CreateSandbox"))?;
        if !req.storages.is_empty() || !req.kernel_modules.is_empty() {
            return Err(logged("CreateSandbox")(SandboxError::Unsupported(
                "sandbox storages and kernel modules are not supported".into(),
            )));
        }
        tracing::info!(sandbox = %req.sandbox_id, "sandbox created");
        Ok(Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        req: agent::DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        self.sandbox
            .destroy()
            .await
            .map_err(logged("DestroySandbox"))?;
        Ok(Empty::new())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: agent::CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        self.sandbox
            .create(&req)
            .await
            .map_err(logged("CreateContainer"))?;
        Ok(Empty::new())
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: agent::StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        self.sandbox
            .start(&req.container_id)
            .await
            .map_err(logged("StartContainer"))?;
        Ok(Empty::new())
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: agent::RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        self.sandbox
            .remove(&req.container_id)
            .await
            .map_err(logged("RemoveContainer"))?;
        Ok(Empty::new())
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: agent::ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        self.sandbox
            .exec(&req)
            .await
            .map_err(logged("ExecProcess"))?;
        Ok(Empty::new())
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: agent::SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        self.sandbox
            .signal(&req.container_id, &req.exec_id, req.signal)
            .await
            .map_err(logged("SignalProcess"))?;
        Ok(Empty::new())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: agent::WaitProcessRequest,
    ) -> ttrpc::Result<agent::WaitProcessResponse> {
        allow(&self.policy, &req)?;
        let s = self
            .sandbox
            .wait(&req.container_id, &req.exec_id)
            .await
            .map_err(logged("WaitProcess"))?;
        Ok(agent::WaitProcessResponse {
            status: s,
            ..Default::default()
        })
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: agent::WriteStreamRequest,
    ) -> ttrpc::Result<agent::WriteStreamResponse> {
        allow(&self.policy, &req)?;
        let len = self
            .sandbox
            .write(&req.container_id, &req.exec_id, &req.data)
            .await
            .map_err(status)?;
        Ok(agent::WriteStreamResponse {
            len,
            ..Default::default()
        })
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        self.read(&req, false).await
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        self.read(&req, true).await
    }

    async fn close_stdin(
        &self,
        _: &TtrpcContext,
        req: agent::CloseStdinRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        self.sandbox
            .close_stdin(&req.container_id, &req.exec_id)
            .await
            .map_err(status)?;
        Ok(Empty::new())
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: agent::StatsContainerRequest,
    ) -> ttrpc::Result<agent::StatsContainerResponse> {
        allow(&self.policy, &req)?;
        self.sandbox
            .stats(&req.container_id)
            .await
            .map_err(logged("StatsContainer"))
    }

    async fn get_oom_event(
        &self,
        _: &TtrpcContext,
        req: agent::GetOOMEventRequest,
    ) -> ttrpc::Result<agent::OOMEvent> {
        allow(&self.policy, &req)?;
        Ok(agent::OOMEvent {
            container_id: self.sandbox.oom_event().await,
            ..Default::default()
        })
    }

    async fn update_interface(
        &self,
        _: &TtrpcContext,
        req: agent::UpdateInterfaceRequest,
    ) -> ttrpc::Result<types::Interface> {
        allow(&self.policy, &req)?;
        let iface = req.interface.into_option().ok_or_else(|| {
            status(SandboxError::Invalid(
                "UpdateInterface carries no interface".into(),
            ))
        })?;
        net::update_interface(&iface)
            .await
            .map_err(logged("UpdateInterface"))?;
        Ok(iface)
    }

    async fn update_routes(
        &self,
        _: &TtrpcContext,
        req: agent::UpdateRoutesRequest,
    ) -> ttrpc::Result<agent::Routes> {
        allow(&self.policy, &req)?;
        let routes = req.routes.into_option().unwrap_or_default();
        net::update_routes(&routes.Routes).map_err(logged("UpdateRoutes"))?;
        Ok(routes)
    }

    async fn get_guest_details(
        &self,
        _: &TtrpcContext,
        req: agent::GuestDetailsRequest,
    ) -> ttrpc::Result<agent::GuestDetailsResponse> {
        allow(&self.policy, &req)?;
        Ok(agent::GuestDetailsResponse {
            agent_details: Some(agent::AgentDetails {
                version: env!("CARGO_PKG_VERSION").into(),
                init_daemon: true,
                supports_seccomp: false,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: agent::UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        Err(unimplemented("UpdateContainer"))
    }

    async fn update_ephemeral_mounts(
        &self,
        _: &TtrpcContext,
        req: agent::UpdateEphemeralMountsRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        Err(unimplemented("UpdateEphemeralMounts"))
    }

    async fn pause_container(
        &self,
        _: &TtrpcContext,
        req: agent::PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        Err(unimplemented("PauseContainer"))
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        req: agent::ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        Err(unimplemented("ResumeContainer"))
    }

    async fn remove_stale_virtiofs_share_mounts(
        &self,
        _: &TtrpcContext,
        req: agent::RemoveStaleVirtiofsShareMountsRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        Err(unimplemented("RemoveStaleVirtiofsShareMounts"))
    }

    async fn list_interfaces(
        &self,
        _: &TtrpcContext,
        req: agent::ListInterfacesRequest,
    ) -> ttrpc::Result<agent::Interfaces> {
        allow(&self.policy, &req)?;
        Err(unimplemented("ListInterfaces"))
    }

    async fn list_routes(
        &self,
        _: &TtrpcContext,
        req: agent::ListRoutesRequest,
    ) -> ttrpc::Result<agent::Routes> {
        allow(&self.policy, &req)?;
        Err(unimplemented("ListRoutes"))
    }

    async fn add_arp_neighbors(
        &self,
        _: &TtrpcContext,
        req: agent::AddARPNeighborsRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        Err(unimplemented("AddARPNeighbors"))
    }

    async fn get_metrics(
        &self,
        _: &TtrpcContext,
        req: agent::GetMetricsRequest,
    ) -> ttrpc::Result<agent::Metrics> {
        allow(&self.policy, &req)?;
        Err(unimplemented("GetMetrics"))
    }

    async fn online_cpu_mem(
        &self,
        _: &TtrpcContext,
        req: agent::OnlineCPUMemRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        Err(unimplemented("OnlineCPUMem"))
    }

    async fn reseed_random_dev(
        &self,
        _: &TtrpcContext,
        req: agent::ReseedRandomDevRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        Err(unimplemented("ReseedRandomDev"))
    }

    async fn mem_hotplug_by_probe(
        &self,
        _: &TtrpcContext,
        req: agent::MemHotplugByProbeRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        Err(unimplemented("MemHotplugByProbe"))
    }

    async fn set_guest_date_time(
        &self,
        _: &TtrpcContext,
        req: agent::SetGuestDateTimeRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        Err(unimplemented("SetGuestDateTime"))
    }

    async fn copy_file(
        &self,
        _: &TtrpcContext,
        req: agent::CopyFileRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        Err(unimplemented("CopyFile"))
    }

    async fn set_policy(
        &self,
        _: &TtrpcContext,
        req: agent::SetPolicyRequest,
    ) -> ttrpc::Result<Empty> {
        match self.policy.set_policy(&req.policy) {
            Ok(()) => Ok(Empty::new()),
            Err(SetPolicyError::Denied(d)) => Err(status(SandboxError::Denied(d))),
            Err(SetPolicyError::Invalid(e)) => {
                Err(logged("SetPolicy")(SandboxError::Invalid(e.to_string())))
            }
        }
    }

    async fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        req: agent::TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        allow(&self.policy, &req)?;
        self.sandbox
            .resize(&req.container_id, &req.exec_id, req.row, req.column)
            .await
            .map_err(status)?;
        Ok(Empty::new())
    }
}

struct PodNetwork {
    sandbox: Arc<Sandbox>,
    policy: Arc<Gate>,
}

#[async_trait::async_trait]
impl pod_ttrpc::PodNetwork for PodNetwork {
    async fn forward_loopback(
        &self,
        _: &TtrpcContext,
        req: pod::ForwardLoopbackRequest,
    ) -> ttrpc::Result<pod::ForwardLoopbackResponse> {
        allow(&self.policy, &req)?;
        // Set up before the workload: a forward added later could take a
        // port containers of the pod talk to each other on.
        if self.sandbox.has_containers().await {
            return Err(logged("ForwardLoopback")(SandboxError::Invalid(
                "loopback forwards must be set up before the first container".into(),
            )));
        }
        let mut ports = Vec::new();
        for f in &req.forwards {
            net::forward_loopback(f.port, &f.target)
                .await
                .map_err(logged("ForwardLoopback"))?;
            ports.push(f.port);
        }
        Ok(pod::ForwardLoopbackResponse {
            ports,
            ..Default::default()
        })
    }
}

struct PodDiagnostics {
    policy: Arc<Gate>,
}

#[async_trait::async_trait]
impl pod_ttrpc::PodDiagnostics for PodDiagnostics {
    async fn agent_stats(
        &self,
        _: &TtrpcContext,
        req: pod::AgentStatsRequest,
    ) -> ttrpc::Result<pod::AgentStatsResponse> {
        allow(&self.policy, &req)?;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(pod::AgentStatsResponse {
            rss_kib: field("VmRSS:"),
            peak_rss_kib: field("VmHWM:"),
            threads: u32::try_from(field("Threads:")).unwrap_or(u32::MAX),
            rss_anon_kib: field("RssAnon:"),
            rss_file_kib: field("RssFile:"),
            rss_shmem_kib: field("RssShmem:"),
            ..Default::default()
        })
    }
}

/// The services the agent serves, by ttrpc service name. Every request
/// but the health check goes through `policy` first.
pub fn services(
    sandbox: Arc<Sandbox>,
    policy: Arc<Gate>,
) -> HashMap<String, ttrpc::r#async::Service> {
    let mut s = health_ttrpc::create_health(Arc::new(HealthService));
    s.extend(agent_ttrpc::create_agent_service(Arc::new(Agent {
        sandbox: sandbox.clone(),
        policy: policy.clone(),
    })));
    s.extend(pod_ttrpc::create_pod_network(Arc::new(PodNetwork {
        sandbox,
        policy: policy.clone(),
    })));
    s.extend(pod_ttrpc::create_pod_diagnostics(Arc::new(
        PodDiagnostics { policy },
    )));
    s
}
