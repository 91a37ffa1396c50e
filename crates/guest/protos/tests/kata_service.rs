//! The ttrpc method paths of the Kata agent API, as the generated client puts
//! them on the wire and as the generated server registers them, compared with
//! the paths a Kata shim and agent use (`/grpc.AgentService/<Method>`,
//! `/grpc.Health/<Method>`). Also one real client/server exchange.

use cocoon_guest_protos::kata::agent::{ReadStreamRequest, ReadStreamResponse, WaitProcessRequest};
use cocoon_guest_protos::kata::agent_ttrpc::{
    AgentService, AgentServiceClient, create_agent_service,
};
use cocoon_guest_protos::kata::health::{CheckRequest, HealthCheckResponse, health_check_response};
use cocoon_guest_protos::kata::health_ttrpc::{Health, HealthClient, create_health};
use cocoon_guest_protos::kata::{agent, agent_ttrpc};
use cocoon_guest_protos::protobuf::Message;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::mpsc;

const AGENT_METHODS: &[&str] = &[
    "CreateContainer",
    "StartContainer",
    "RemoveContainer",
    "ExecProcess",
    "SignalProcess",
    "WaitProcess",
    "UpdateContainer",
    "UpdateEphemeralMounts",
    "StatsContainer",
    "PauseContainer",
    "ResumeContainer",
    "RemoveStaleVirtiofsShareMounts",
    "WriteStdin",
    "ReadStdout",
    "ReadStderr",
    "CloseStdin",
    "TtyWinResize",
    "UpdateInterface",
    "UpdateRoutes",
    "ListInterfaces",
    "ListRoutes",
    "AddARPNeighbors",
    "GetMetrics",
    "CreateSandbox",
    "DestroySandbox",
    "OnlineCPUMem",
    "ReseedRandomDev",
    "GetGuestDetails",
    "MemHotplugByProbe",
    "SetGuestDateTime",
    "CopyFile",
    "GetOOMEvent",
    "SetPolicy",
];

const HEALTH_METHODS: &[&str] = &["Check", "Version"];

fn expected_paths() -> Vec<String> {
    let agent = AGENT_METHODS
        .iter()
        .map(|m| format!("/grpc.AgentService/{m}"));
    let health = HEALTH_METHODS.iter().map(|m| format!("/grpc.Health/{m}"));
    agent.chain(health).collect()
}

/// ttrpc frame header: length and stream id (big endian), type, flags.
const HEADER_LEN: usize = 10;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;

/// Answers every request on one connection with an empty OK response (which
/// decodes as any default message) and reports the path it named.
async fn record_paths(listener: UnixListener, paths: mpsc::UnboundedSender<String>) {
    let (mut conn, _) = listener.accept().await.expect("accept");
    let mut header = [0u8; HEADER_LEN];
    while conn.read_exact(&mut header).await.is_ok() {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        assert_eq!(header[8], TYPE_REQUEST, "frame type");
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body).await.expect("request body");
        let req = ttrpc::Request::parse_from_bytes(&body).expect("ttrpc request");
        paths
            .send(format!("/{}/{}", req.service, req.method))
            .expect("report path");
        let mut reply = [0u8; HEADER_LEN];
        reply[4..8].copy_from_slice(&header[4..8]);
        reply[8] = TYPE_RESPONSE;
        conn.write_all(&reply).await.expect("response");
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::Context::default()
}

/// Calls each listed client method with a default request; every call must succeed.
macro_rules! call_each {
    ($client:expr, $($method:ident),* $(,)?) => {
        $( $client.$method(ctx(), &Default::default()).await.expect(stringify!($method)); )*
    };
}

#[tokio::test]
async fn generated_clients_send_kata_method_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(record_paths(listener, tx));

    let conn = ttrpc::r#async::Client::connect(&format!("unix://{}", sock.display()))
        .await
        .expect("connect");
    let agent = AgentServiceClient::new(conn.clone());
    call_each!(
        agent,
        create_container,
        start_container,
        remove_container,
        exec_process,
        signal_process,
        wait_process,
        update_container,
        update_ephemeral_mounts,
        stats_container,
        pause_container,
        resume_container,
        remove_stale_virtiofs_share_mounts,
        write_stdin,
        read_stdout,
        read_stderr,
        close_stdin,
        tty_win_resize,
        update_interface,
        update_routes,
        list_interfaces,
        list_routes,
        add_arp_neighbors,
        get_metrics,
        create_sandbox,
        destroy_sandbox,
        online_cpu_mem,
        reseed_random_dev,
        get_guest_details,
        mem_hotplug_by_probe,
        set_guest_date_time,
        copy_file,
        get_oom_event,
        set_policy,
    );
    let health = HealthClient::new(conn);
    call_each!(health, check, version);
    drop(agent);
    drop(health);

    let mut seen = Vec::new();
    while seen.len() < expected_paths().len() {
        seen.push(rx.recv().await.expect("a path per call"));
    }
    assert_eq!(seen, expected_paths());
    server.abort();
}

struct Unimplemented;
impl AgentService for Unimplemented {}
impl Health for Unimplemented {}

#[test]
fn generated_servers_register_kata_method_paths() {
    let agent: Arc<dyn AgentService + Send + Sync> = Arc::new(Unimplemented);
    let health: Arc<dyn Health + Send + Sync> = Arc::new(Unimplemented);
    let mut registered: Vec<String> = create_agent_service(agent)
        .into_iter()
        .chain(create_health(health))
        .flat_map(|(service, s)| {
            s.methods
                .into_keys()
                .map(move |m| format!("/{service}/{m}"))
        })
        .collect();
    registered.sort();
    let mut expected = expected_paths();
    expected.sort();
    assert_eq!(registered, expected);
}

/// An agent that answers two calls and leaves the rest to the defaults.
struct Echo;

#[async_trait::async_trait]
impl AgentService for Echo {
    async fn wait_process(
        &self,
        _: &ttrpc::r#async::TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<agent::WaitProcessResponse> {
        Ok(agent::WaitProcessResponse {
            status: if req.exec_id == "killed" { 137 } else { 0 },
            ..Default::default()
        })
    }

    async fn read_stdout(
        &self,
        _: &ttrpc::r#async::TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        Ok(ReadStreamResponse {
            data: vec![b'x'; req.len as usize],
            ..Default::default()
        })
    }
}

#[async_trait::async_trait]
impl Health for Echo {
    async fn check(
        &self,
        _: &ttrpc::r#async::TtrpcContext,
        _: CheckRequest,
    ) -> ttrpc::Result<HealthCheckResponse> {
        Ok(HealthCheckResponse {
            status: health_check_response::ServingStatus::SERVING.into(),
            ..Default::default()
        })
    }
}

#[tokio::test]
async fn client_and_server_talk_over_a_unix_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = format!("unix://{}", dir.path().join("agent.sock").display());
    let agent: Arc<dyn AgentService + Send + Sync> = Arc::new(Echo);
    let health: Arc<dyn Health + Send + Sync> = Arc::new(Echo);
    let mut server = ttrpc::r#async::Server::new()
        .bind(&addr)
        .expect("bind")
        .register_service(create_agent_service(agent))
        .register_service(create_health(health));
    server.start().await.expect("start server");

    let conn = ttrpc::r#async::Client::connect(&addr)
        .await
        .expect("connect");
    let client = agent_ttrpc::AgentServiceClient::new(conn.clone());
    let waited = client
        .wait_process(
            ctx(),
            &WaitProcessRequest {
                container_id: "c1".into(),
                exec_id: "killed".into(),
                ..Default::default()
            },
        )
        .await
        .expect("WaitProcess");
    assert_eq!(waited.status, 137);

    let read = client
        .read_stdout(
            ctx(),
            &ReadStreamRequest {
                len: 5,
                ..Default::default()
            },
        )
        .await
        .expect("ReadStdout");
    assert_eq!(read.data, b"xxxxx");

    let raw = conn.clone();
    let status = HealthClient::new(conn)
        .check(ctx(), &CheckRequest::default())
        .await
        .expect("Check");
    assert_eq!(
        status.status.enum_value(),
        Ok(health_check_response::ServingStatus::SERVING)
    );

    // A call the agent does not implement fails with a status, naming the path.
    let err = client
        .create_container(ctx(), &Default::default())
        .await
        .expect_err("CreateContainer is not implemented by Echo");
    match err {
        ttrpc::Error::RpcStatus(s) => {
            assert_eq!(s.code(), ttrpc::Code::NOT_FOUND);
            assert!(
                s.message().contains("/grpc.AgentService/CreateContainer"),
                "{}",
                s.message()
            );
        }
        other => panic!("expected an RPC status, got {other:?}"),
    }
    // A Kata call left out of our protos (AddSwap) is refused by the server.
    let left_out = ttrpc::Request {
        service: "grpc.AgentService".into(),
        method: "AddSwap".into(),
        ..Default::default()
    };
    match raw.request(left_out).await {
        Err(ttrpc::Error::RpcStatus(s)) => assert_eq!(s.code(), ttrpc::Code::UNIMPLEMENTED),
        other => panic!("expected UNIMPLEMENTED for AddSwap, got {other:?}"),
    }
    server.shutdown().await.expect("shutdown");
}
