//! The shim process's life: `start` (find or spawn the pod's shim),
//! serving the task API, and `delete` (containerd cleaning up after a shim
//! that died).

use crate::events::Publisher;
use crate::guard::Guard;
use crate::spec::{self, Kind};
use crate::task::Service;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{ExitSignal, Shim, spawn};
use containerd_shim::{Config, DeleteResponse, Error, Flags, StartOpts};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use std::sync::Arc;

/// The shim.
pub struct CocoonShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    /// containerd's address (`-address`).
    address: String,
    id: String,
    bundle: String,
}

/// How long an exiting shim waits for its queued events to be delivered.
const EVENTS_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// The file in a pod's sandbox bundle naming the VM state directory.
pub const STATE_FILE: &str = "cocoon-state-dir";

/// The pod a container belongs to: its CRI sandbox id, or itself.
pub fn grouping_id(id: &str, config_json: &[u8]) -> String {
    match spec::from_json(config_json) {
        Ok((_, meta)) if meta.kind == Kind::Container => {
            meta.sandbox_id.unwrap_or_else(|| id.into())
        }
        _ => id.into(),
    }
}

/// `start`: the address of the shim serving the container's pod, spawned
/// when there is none yet. The working directory is the bundle.
pub async fn start_pod_shim(opts: StartOpts) -> Result<String, Error> {
    let spec = std::fs::read("config.json")
        .map_err(|e| Error::InvalidArgument(format!("reading the bundle's config.json: {e}")))?;
    let grouping = grouping_id(&opts.id, &spec);
    let address = opts.socket_address(&grouping);
    if !crate::guard::served(&address) {
        spawn(opts, &grouping, Vec::new()).await?;
    }
    std::fs::write("address", &address)
        .map_err(|e| Error::Other(format!("writing the address file: {e}")))?;
    Ok(address)
}

/// Whether `input` (the `start` action's stdin) carries the bootstrap
/// parameters of containerd 2.3+ for this shim; otherwise it is the
/// legacy protocol (flags and environment, runtime options at most).
pub fn is_bootstrap(input: &[u8], flags: &Flags) -> bool {
    use containerd_shim_protos::protobuf::Message;
    containerd_shim::bootstrap::BootstrapParams::parse_from_bytes(input).is_ok_and(|p| {
        p.instance_id == flags.id
            && p.namespace == flags.namespace
            && !p.containerd_ttrpc_address.is_empty()
    })
}

/// `start` under the legacy protocol, which containerd 1.6 speaks: the
/// reply is the bare address (1.7 and 2.x read that too; the JSON reply
/// newer shims give is not understood by 1.6).
pub async fn start_legacy(flags: &Flags) -> Result<String, Error> {
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
    if ttrpc_address.is_empty() {
        return Err(Error::InvalidArgument(
            "TTRPC_ADDRESS is not set: containerd starts this shim".into(),
        ));
    }
    start_pod_shim(StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address,
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    })
    .await
}

#[async_trait::async_trait]
impl Shim for CocoonShim {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, config: &mut Config) -> Self {
        // Processes in the guest are the agent's to reap; QEMU and its
        // helpers are waited for by the hypervisor driver.
        config.no_reaper = true;
        Self {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            id: args.id.clone(),
            bundle: if args.bundle.is_empty() {
                ".".into()
            } else {
                args.bundle.clone()
            },
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let spec = std::fs::read("config.json").map_err(|e| {
            Error::InvalidArgument(format!("reading the bundle's config.json: {e}"))
        })?;
        let grouping = grouping_id(&opts.id, &spec);
        let address = opts.socket_address(&grouping);
        if !crate::guard::served(&address) {
            spawn(opts, &grouping, Vec::new()).await?;
        }
        std::fs::write("address", &address)
            .map_err(|e| Error::Other(format!("writing the address file: {e}")))?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        // The shim that served this container is gone and its VM died
        // with it (the VMM is killed when its parent dies); its guard
        // normally cleaned up already. What may be left is state on
        // disk, named by the bundle's files or, for a pod's own task,
        // by its id.
        let bundle = std::path::Path::new(&self.bundle);
        let recorded = std::fs::read_to_string(bundle.join("address")).ok();
        let own = (!self.address.is_empty()).then(|| {
            StartOpts {
                address: self.address.clone(),
                namespace: self.namespace.clone(),
                ..Default::default()
            }
            .socket_address(&self.id)
        });
        let state = std::fs::read(bundle.join(STATE_FILE)).ok().map(|dir| {
            std::path::PathBuf::from(
                <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(dir),
            )
        });
        let sockets: Vec<&str> = recorded
            .iter()
            .map(|a| a.trim())
            .chain(own.as_deref())
            .collect();
        // containerd also runs `delete` when it could not reach a shim
        // that still runs: then nothing of the pod is touched.
        if !sockets.iter().any(|s| crate::guard::served(s)) {
            for socket in sockets {
                crate::guard::remove_dead_socket(socket);
            }
            if let Some(dir) = &state {
                crate::guard::remove_pod_state(dir, &self.id);
            }
        }
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(Timestamp::now()).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        Service::new(
            &self.namespace,
            Publisher::lazy(&publisher.address),
            self.exit.clone(),
            None,
        )
    }
}

/// The shim server (the process `start` spawned with `-socket`): serves
/// the task API under both names containerd uses for it,
/// `containerd.task.v2.Task` (containerd 1.6, 1.7 and 2.x with the bare
/// address reply) and `containerd.task.v3.Task` (2.x with the bootstrap
/// protocol); the messages of both are the same.
pub async fn serve(flags: &Flags) -> Result<(), Error> {
    use containerd_shim_protos::shim_async::{Task, create_task};
    if flags.socket.is_empty() {
        return Err(Error::InvalidArgument(
            "the shim socket (-socket) is missing".into(),
        ));
    }
    containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)?;
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").map_err(|_| {
        Error::InvalidArgument("TTRPC_ADDRESS is not set: containerd starts this shim".into())
    })?;
    let exit = Arc::new(ExitSignal::default());
    let publisher = Publisher::connect(&ttrpc_address)
        .await
        .map_err(Error::Other)?;
    // Cleans up after this process if it is killed outright.
    let guard = match Guard::spawn(&flags.socket, &flags.address) {
        Ok(guard) => Some(guard),
        Err(e) => {
            log::warn!(
                "no guard for this shim ({e}): if it is killed, containerd's cleanup alone remains"
            );
            None
        }
    };
    let service = Service::new(&flags.namespace, publisher.clone(), exit.clone(), guard);
    let task: Arc<dyn Task + Send + Sync> = Arc::new(service.clone());
    let mut services = create_task(task.clone());
    for (name, service) in create_task(task) {
        services.insert(name.replace(".v3.", ".v2."), service);
    }
    let path = crate::guard::socket_path(&flags.socket);
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Other(format!("creating {}: {e}", dir.display())))?;
    }
    // The socket file this shim made, told to the guard at once and
    // removed at exit only if it is still the same file.
    let (server, bound) = crate::guard::with_socket_lock(path, || {
        // A socket file left by a shim that died is in the way.
        let _ = std::fs::remove_file(path);
        let server = containerd_shim_protos::ttrpc::r#async::Server::new()
            .bind(&flags.socket)
            .map_err(|e| Error::Other(format!("listening on {}: {e}", flags.socket)))?;
        Ok::<_, Error>((server, crate::guard::file_id(path)))
    })?;
    match (service.guard(), bound) {
        (Some(guard), Some(id)) => guard.socket_bound(id),
        (Some(_), None) => log::warn!("the shim's socket {path} cannot be examined"),
        _ => {}
    }
    let mut server = server.register_service(services);
    server
        .start()
        .await
        .map_err(|e| Error::Other(format!("starting the task server: {e}")))?;
    // `start` reads our stdout until it closes: the server is up.
    // SAFETY: dup2 onto our own standard output.
    unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
    log::info!("cocoon shim serving {}", flags.socket);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Other(e.to_string()))?;
    // After Shutdown the pod is stopped and its state removed; after
    // SIGTERM the VM dies with this process and the guard removes its
    // state.
    let clean = tokio::select! {
        _ = exit.wait() => true,
        _ = term.recv() => {
            log::info!("SIGTERM: shutting down");
            false
        }
    };
    // No new `start` finds this shim from here on.
    crate::guard::with_socket_lock(path, || {
        if bound.is_some() && crate::guard::file_id(path) == bound {
            let _ = std::fs::remove_file(path);
        }
    });
    // The last events (a pod's TaskDelete) reach containerd before the
    // shim goes.
    if !publisher.flush(EVENTS_FLUSH).await {
        log::warn!("events to containerd were lost or are still queued at exit");
    }
    let _ = server.shutdown().await;
    if clean && let Some(guard) = service.guard() {
        guard.done();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_of_a_pod_go_to_its_sandbox_shim() {
        let c = br#"{"process": {"args": ["sh"]}, "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "pod1"}}"#;
        assert_eq!(grouping_id("c1", c), "pod1");
        let s = br#"{"process": {"args": ["/pause"]}, "annotations": {
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-id": "pod1"}}"#;
        assert_eq!(grouping_id("pod1", s), "pod1");
        assert_eq!(grouping_id("lone", br#"{"process": {}}"#), "lone");
        assert_eq!(grouping_id("bad", b"not json"), "bad");
    }
}
