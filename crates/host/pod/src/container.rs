//! Containers in a pod VM from the host's side: the OCI spec sent in
//! `CreateContainer` (as Kata's protobuf mirror), the guest-pull storage,
//! and the network set-up calls a pod makes before its first container.

use crate::{AgentClient, PodError};
use cocoon_guest_protos::kata::{agent, oci, types};
use cocoon_guest_protos::pod;
use cocoon_hypervisor::UserNetwork;

/// What to run: the image's own command when `args` is empty.
#[derive(Debug, Clone, Default)]
pub struct ContainerConfig {
    /// Container id (also the exec id of its init process).
    pub id: String,
    /// Image reference, pulled inside the guest.
    pub image: String,
    /// Command and arguments; empty: the image's entrypoint and cmd.
    pub args: Vec<String>,
    /// Extra `KEY=VALUE` environment (over the image's).
    pub env: Vec<String>,
    /// Working directory; empty: the image's.
    pub cwd: String,
    /// Mount the root filesystem read-only.
    pub readonly_rootfs: bool,
    /// Hostname in the container's UTS namespace; empty: the id.
    pub hostname: String,
    /// Run the process on a terminal (in the guest): stdout carries what
    /// it prints, stderr is empty.
    pub terminal: bool,
    /// The terminal's initial size, (rows, columns).
    pub console_size: Option<(u16, u16)>,
}

/// Docker's default capability set: what a container gets unless it asks.
pub use cocoon_types::container::CAPABILITIES as DEFAULT_CAPS;

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> oci::Mount {
    oci::Mount {
        destination: dest.into(),
        type_: typ.into(),
        source: source.into(),
        options: options.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The default set as bounding, effective and permitted capabilities.
fn default_caps() -> oci::LinuxCapabilities {
    oci::LinuxCapabilities {
        Bounding: strings(DEFAULT_CAPS),
        Effective: strings(DEFAULT_CAPS),
        Permitted: strings(DEFAULT_CAPS),
        ..Default::default()
    }
}

/// A spec like containerd's default for a plain container: its own PID,
/// IPC, UTS and mount namespaces, the VM's network, standard mounts,
/// masked kernel files and Docker's default capabilities.
pub fn default_spec(c: &ContainerConfig) -> oci::Spec {
    let process = oci::Process {
        Args: c.args.clone(),
        Env: c.env.clone(),
        Cwd: if c.cwd.is_empty() {
            "/".into()
        } else {
            c.cwd.clone()
        },
        User: Some(oci::User::default()).into(),
        Capabilities: Some(default_caps()).into(),
        Rlimits: vec![oci::POSIXRlimit {
            Type: "RLIMIT_NOFILE".into(),
            Hard: 1024,
            Soft: 1024,
            ..Default::default()
        }],
        NoNewPrivileges: true,
        Terminal: c.terminal,
        ConsoleSize: c
            .console_size
            .filter(|_| c.terminal)
            .map(|(rows, cols)| oci::Box {
                Height: rows.into(),
                Width: cols.into(),
                ..Default::default()
            })
            .into(),
        ..Default::default()
    };
    let namespaces = ["pid", "ipc", "uts", "mount"]
        .iter()
        .map(|t| oci::LinuxNamespace {
            Type: t.to_string(),
            ..Default::default()
        })
        .collect();
    let linux = oci::Linux {
        Namespaces: namespaces,
        MaskedPaths: strings(cocoon_types::container::MASKED_PATHS),
        ReadonlyPaths: strings(cocoon_types::container::READONLY_PATHS),
        ..Default::default()
    };
    let mut annotations = std::collections::HashMap::new();
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    annotations.insert("io.kubernetes.cri.image-name".into(), c.image.clone());
    oci::Spec {
        Version: "1.1.0".into(),
        Process: Some(process).into(),
        Root: Some(oci::Root {
            Path: "rootfs".into(),
            Readonly: c.readonly_rootfs,
            ..Default::default()
        })
        .into(),
        Hostname: if c.hostname.is_empty() {
            &c.id
        } else {
            &c.hostname
        }
        .chars()
        .take(63)
        .collect(),
        Mounts: vec![
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            ),
            mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ),
            mount(
                "/dev/mqueue",
                "mqueue",
                "mqueue",
                &["nosuid", "noexec", "nodev"],
            ),
            mount(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            ),
            mount(
                "/sys/fs/cgroup",
                "cgroup",
                "cgroup",
                &["nosuid", "noexec", "nodev", "relatime", "ro"],
            ),
        ],
        Annotations: annotations,
        Linux: Some(linux).into(),
        ..Default::default()
    }
}

/// The storage that makes the guest pull `image` for container `id`.
pub fn guest_pull_storage(id: &str, image: &str) -> agent::Storage {
    agent::Storage {
        driver: "image_guest_pull".into(),
        source: image.into(),
        fstype: "overlay".into(),
        mount_point: format!("/run/kata-containers/{id}/rootfs"),
        driver_options: vec![r#"image_guest_pull={"metadata":{}}"#.into()],
        ..Default::default()
    }
}

fn agent_err(call: &'static str) -> impl Fn(ttrpc::Error) -> PodError {
    move |e| PodError::Agent(call, crate::describe(e))
}

/// No deadline: these calls last as long as the workload does.
fn forever() -> ttrpc::context::Context {
    ttrpc::context::Context::default()
}

impl AgentClient {
    /// Configures the guest NIC on QEMU's user network, its default route,
    /// and the guest loopback ports that lead to the host's.
    /// With `default_route` false the NIC only reaches the forwards (the
    /// pod's own network has the default route).
    pub async fn setup_user_network(
        &self,
        forwards: &[u16],
        default_route: bool,
    ) -> Result<(), PodError> {
        let iface = types::Interface {
            hwAddr: UserNetwork::MAC.into(),
            name: "eth0".into(),
            mtu: 1500,
            IPAddresses: vec![types::IPAddress {
                address: UserNetwork::GUEST_IP.into(),
                mask: UserNetwork::PREFIX.to_string(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = crate::ctx(std::time::Duration::from_secs(30));
        self.agent
            .update_interface(
                t.clone(),
                &agent::UpdateInterfaceRequest {
                    interface: Some(iface).into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_err("UpdateInterface"))?;
        if default_route {
            let route = types::Route {
                dest: "default".into(),
                gateway: UserNetwork::GATEWAY.into(),
                ..Default::default()
            };
            self.agent
                .update_routes(
                    t.clone(),
                    &agent::UpdateRoutesRequest {
                        routes: Some(agent::Routes {
                            Routes: vec![route],
                            ..Default::default()
                        })
                        .into(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(agent_err("UpdateRoutes"))?;
        }
        if !forwards.is_empty() {
            let req = pod::ForwardLoopbackRequest {
                forwards: forwards
                    .iter()
                    .map(|p| pod::LoopbackForward {
                        port: u32::from(*p),
                        target: format!("{}:{p}", UserNetwork::FORWARD_IP),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            self.network
                .forward_loopback(t, &req)
                .await
                .map_err(agent_err("ForwardLoopback"))?;
        }
        Ok(())
    }

    /// SetPolicy: the legacy way to give the guest an agent policy (Kata's
    /// `io.katacontainers.config.agent.policy`); the guest takes it only
    /// where the policy from initdata allows it.
    pub async fn set_policy(&self, policy: &str) -> Result<(), PodError> {
        self.agent
            .set_policy(
                crate::ctx(std::time::Duration::from_secs(30)),
                &agent::SetPolicyRequest {
                    policy: policy.into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_err("SetPolicy"))?;
        Ok(())
    }

    /// CreateSandbox.
    pub async fn create_sandbox(&self, id: &str, hostname: &str) -> Result<(), PodError> {
        self.agent
            .create_sandbox(
                crate::ctx(std::time::Duration::from_secs(30)),
                &agent::CreateSandboxRequest {
                    sandbox_id: id.into(),
                    hostname: hostname.into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_err("CreateSandbox"))?;
        Ok(())
    }

    /// CreateContainer with a guest-pulled image (the pull happens here,
    /// inside the guest), then StartContainer.
    pub async fn run_container(&self, c: &ContainerConfig) -> Result<(), PodError> {
        let req = agent::CreateContainerRequest {
            container_id: c.id.clone(),
            exec_id: c.id.clone(),
            OCI: Some(default_spec(c)).into(),
            storages: vec![guest_pull_storage(&c.id, &c.image)],
            ..Default::default()
        };
        self.agent
            .create_container(forever(), &req)
            .await
            .map_err(agent_err("CreateContainer"))?;
        self.start_container(&c.id).await
    }

    /// StartContainer: the created container's init runs.
    pub async fn start_container(&self, id: &str) -> Result<(), PodError> {
        self.agent
            .start_container(
                crate::ctx(std::time::Duration::from_secs(60)),
                &agent::StartContainerRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_err("StartContainer"))?;
        Ok(())
    }

    /// ExecProcess: `args` in the running container `id`, as `exec_id`.
    pub async fn exec(&self, id: &str, exec_id: &str, args: &[String]) -> Result<(), PodError> {
        let process = oci::Process {
            Args: args.to_vec(),
            Cwd: "/".into(),
            User: Some(oci::User::default()).into(),
            Capabilities: Some(default_caps()).into(),
            NoNewPrivileges: true,
            ..Default::default()
        };
        self.exec_process(id, exec_id, process).await
    }

    /// ExecProcess: `process` in the running container `id`, as `exec_id`.
    pub async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process: oci::Process,
    ) -> Result<(), PodError> {
        self.agent
            .exec_process(
                crate::ctx(std::time::Duration::from_secs(60)),
                &agent::ExecProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    process: Some(process).into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_err("ExecProcess"))?;
        Ok(())
    }

    /// TtyWinResize: the terminal of a process gets a new size.
    pub async fn resize(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), PodError> {
        self.agent
            .tty_win_resize(
                crate::ctx(std::time::Duration::from_secs(10)),
                &agent::TtyWinResizeRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    row: rows,
                    column: cols,
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_err("TtyWinResize"))?;
        Ok(())
    }

    /// ReadStdout / ReadStderr: the next chunk; empty at end of stream.
    pub async fn read(&self, id: &str, exec_id: &str, stderr: bool) -> Result<Vec<u8>, PodError> {
        let req = agent::ReadStreamRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            len: 64 * 1024,
            ..Default::default()
        };
        let r = if stderr {
            self.agent.read_stderr(forever(), &req).await
        } else {
            self.agent.read_stdout(forever(), &req).await
        };
        Ok(r.map_err(agent_err("ReadStream"))?.data)
    }

    /// WriteStdin, all of `data`.
    pub async fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<(), PodError> {
        let mut off = 0;
        while off < data.len() {
            let r = self
                .agent
                .write_stdin(
                    forever(),
                    &agent::WriteStreamRequest {
                        container_id: id.into(),
                        exec_id: exec_id.into(),
                        data: data[off..].to_vec(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(agent_err("WriteStdin"))?;
            if r.len == 0 {
                return Err(PodError::Agent("WriteStdin", "wrote nothing".into()));
            }
            off += r.len as usize;
        }
        Ok(())
    }

    /// CloseStdin.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), PodError> {
        self.agent
            .close_stdin(
                crate::ctx(std::time::Duration::from_secs(30)),
                &agent::CloseStdinRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_err("CloseStdin"))?;
        Ok(())
    }

    /// WaitProcess: the exit status (128 + signal when killed).
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<i32, PodError> {
        Ok(self
            .agent
            .wait_process(
                forever(),
                &agent::WaitProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_err("WaitProcess"))?
            .status)
    }

    /// SignalProcess.
    pub async fn signal(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), PodError> {
        self.agent
            .signal_process(
                crate::ctx(std::time::Duration::from_secs(30)),
                &agent::SignalProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    signal,
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_err("SignalProcess"))?;
        Ok(())
    }

    /// RemoveContainer.
    pub async fn remove_container(&self, id: &str) -> Result<(), PodError> {
        self.agent
            .remove_container(
                crate::ctx(std::time::Duration::from_secs(60)),
                &agent::RemoveContainerRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_err("RemoveContainer"))?;
        Ok(())
    }

    /// StatsContainer.
    pub async fn stats(&self, id: &str) -> Result<agent::StatsContainerResponse, PodError> {
        self.agent
            .stats_container(
                crate::ctx(std::time::Duration::from_secs(30)),
                &agent::StatsContainerRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_err("StatsContainer"))
    }
}
