//! The agent's ttrpc services: `grpc.Health` and the `grpc.AgentService`
//! subset a pod needs (containers, processes, stdio, network). The other
//! calls answer UNIMPLEMENTED.

use super::net;
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

#[async_trait::async_trait]
impl agent_ttrpc::AgentService for Agent {
    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: agent::CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
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
        _: agent::DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
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
        let data = self
            .sandbox
            .read(&req.container_id, &req.exec_id, req.len, false)
            .await
            .map_err(status)?;
        Ok(agent::ReadStreamResponse {
            data,
            ..Default::default()
        })
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        let data = self
            .sandbox
            .read(&req.container_id, &req.exec_id, req.len, true)
            .await
            .map_err(status)?;
        Ok(agent::ReadStreamResponse {
            data,
            ..Default::default()
        })
    }

    async fn close_stdin(
        &self,
        _: &TtrpcContext,
        req: agent::CloseStdinRequest,
    ) -> ttrpc::Result<Empty> {
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
        self.sandbox
            .stats(&req.container_id)
            .await
            .map_err(logged("StatsContainer"))
    }

    async fn get_oom_event(
        &self,
        _: &TtrpcContext,
        _: agent::GetOOMEventRequest,
    ) -> ttrpc::Result<agent::OOMEvent> {
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
        let routes = req.routes.into_option().unwrap_or_default();
        net::update_routes(&routes.Routes).map_err(logged("UpdateRoutes"))?;
        Ok(routes)
    }

    async fn get_guest_details(
        &self,
        _: &TtrpcContext,
        _: agent::GuestDetailsRequest,
    ) -> ttrpc::Result<agent::GuestDetailsResponse> {
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
        _: agent::UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        Err(unimplemented("UpdateContainer"))
    }

    async fn update_ephemeral_mounts(
        &self,
        _: &TtrpcContext,
        _: agent::UpdateEphemeralMountsRequest,
    ) -> ttrpc::Result<Empty> {
        Err(unimplemented("UpdateEphemeralMounts"))
    }

    async fn pause_container(
        &self,
        _: &TtrpcContext,
        _: agent::PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        Err(unimplemented("PauseContainer"))
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        _: agent::ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        Err(unimplemented("ResumeContainer"))
    }

    async fn remove_stale_virtiofs_share_mounts(
        &self,
        _: &TtrpcContext,
        _: agent::RemoveStaleVirtiofsShareMountsRequest,
    ) -> ttrpc::Result<Empty> {
        Err(unimplemented("RemoveStaleVirtiofsShareMounts"))
    }

    async fn list_interfaces(
        &self,
        _: &TtrpcContext,
        _: agent::ListInterfacesRequest,
    ) -> ttrpc::Result<agent::Interfaces> {
        Err(unimplemented("ListInterfaces"))
    }

    async fn list_routes(
        &self,
        _: &TtrpcContext,
        _: agent::ListRoutesRequest,
    ) -> ttrpc::Result<agent::Routes> {
        Err(unimplemented("ListRoutes"))
    }

    async fn add_arp_neighbors(
        &self,
        _: &TtrpcContext,
        _: agent::AddARPNeighborsRequest,
    ) -> ttrpc::Result<Empty> {
        Err(unimplemented("AddARPNeighbors"))
    }

    async fn get_metrics(
        &self,
        _: &TtrpcContext,
        _: agent::GetMetricsRequest,
    ) -> ttrpc::Result<agent::Metrics> {
        Err(unimplemented("GetMetrics"))
    }

    async fn online_cpu_mem(
        &self,
        _: &TtrpcContext,
        _: agent::OnlineCPUMemRequest,
    ) -> ttrpc::Result<Empty> {
        Err(unimplemented("OnlineCPUMem"))
    }

    async fn reseed_random_dev(
        &self,
        _: &TtrpcContext,
        _: agent::ReseedRandomDevRequest,
    ) -> ttrpc::Result<Empty> {
        Err(unimplemented("ReseedRandomDev"))
    }

    async fn mem_hotplug_by_probe(
        &self,
        _: &TtrpcContext,
        _: agent::MemHotplugByProbeRequest,
    ) -> ttrpc::Result<Empty> {
        Err(unimplemented("MemHotplugByProbe"))
    }

    async fn set_guest_date_time(
        &self,
        _: &TtrpcContext,
        _: agent::SetGuestDateTimeRequest,
    ) -> ttrpc::Result<Empty> {
        Err(unimplemented("SetGuestDateTime"))
    }

    async fn copy_file(&self, _: &TtrpcContext, _: agent::CopyFileRequest) -> ttrpc::Result<Empty> {
        Err(unimplemented("CopyFile"))
    }

    async fn set_policy(
        &self,
        _: &TtrpcContext,
        _: agent::SetPolicyRequest,
    ) -> ttrpc::Result<Empty> {
        Err(unimplemented("SetPolicy"))
    }

    async fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        req: agent::TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandbox
            .resize(&req.container_id, &req.exec_id, req.row, req.column)
            .await
            .map_err(status)?;
        Ok(Empty::new())
    }
}

struct PodNetwork {
    sandbox: Arc<Sandbox>,
}

#[async_trait::async_trait]
impl pod_ttrpc::PodNetwork for PodNetwork {
    async fn forward_loopback(
        &self,
        _: &TtrpcContext,
        req: pod::ForwardLoopbackRequest,
    ) -> ttrpc::Result<pod::ForwardLoopbackResponse> {
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

struct PodDiagnostics;

#[async_trait::async_trait]
impl pod_ttrpc::PodDiagnostics for PodDiagnostics {
    async fn agent_stats(
        &self,
        _: &TtrpcContext,
        _: pod::AgentStatsRequest,
    ) -> ttrpc::Result<pod::AgentStatsResponse> {
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
            ..Default::default()
        })
    }
}

/// The services the agent serves, by ttrpc service name.
pub fn services(sandbox: Arc<Sandbox>) -> HashMap<String, ttrpc::r#async::Service> {
    let mut s = health_ttrpc::create_health(Arc::new(HealthService));
    s.extend(agent_ttrpc::create_agent_service(Arc::new(Agent {
        sandbox: sandbox.clone(),
    })));
    s.extend(pod_ttrpc::create_pod_network(Arc::new(PodNetwork {
        sandbox,
    })));
    s.extend(pod_ttrpc::create_pod_diagnostics(Arc::new(PodDiagnostics)));
    s
}
