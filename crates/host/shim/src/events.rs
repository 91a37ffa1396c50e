//! Task events to containerd, delivered in the order they were published,
//! with a flush the shim waits for before it exits.
//!
//! The shim library's publisher queues events and forwards them from a
//! background task, putting a failed one back at the end of its queue;
//! nothing waits for that queue, so the last events of a shim that exits
//! right after answering (`TaskDelete` before `Shutdown`) could be lost,
//! and a retried event could overtake later ones.

use containerd_shim::util::{convert_to_any, timestamp};
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::EventsClient;
use containerd_shim_protos::ttrpc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Events held while containerd is unreachable; beyond that they are
/// dropped (with a warning) rather than stalling the task API.
const QUEUE: usize = 1024;
/// How long an event is retried while containerd cannot be reached (a
/// containerd restart, which pods survive), with pauses doubling from
/// [`FIRST_PAUSE`] up to [`MAX_PAUSE`].
const RETRY_FOR: Duration = Duration::from_secs(60);
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(2);
/// How long one forward may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

enum Item {
    Event(Envelope),
    /// Answered with whether every event since the last flush arrived.
    Flush(oneshot::Sender<bool>),
}

/// A handle on the shim's event queue.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Item>,
    /// Set when an event could not even be queued.
    dropped: Arc<AtomicBool>,
}

/// containerd's ttrpc address as a ttrpc client takes it (containerd
/// passes a bare path in `TTRPC_ADDRESS`).
fn client_address(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("unix://{address}")
    }
}

/// The queue's worker: where containerd is, and for how long an event is
/// retried.
struct Worker {
    address: String,
    client: Option<EventsClient>,
    retry_for: Duration,
    /// Whether an event was given up on since the last flush.
    lost: bool,
}

impl Publisher {
    /// Connects to containerd at `address` (its `TTRPC_ADDRESS`): a shim
    /// that cannot reach it fails at once, not at its first event.
    pub async fn connect(address: &str) -> Result<Self, String> {
        let address = client_address(address);
        let client = ttrpc::r#async::Client::connect(&address)
            .await
            .map_err(|e| format!("connecting to containerd's event service at {address}: {e}"))?;
        Ok(Self::spawn(Worker::new(
            address,
            Some(EventsClient::new(client)),
            RETRY_FOR,
        )))
    }

    /// A publisher that connects at its first event.
    pub fn lazy(address: &str) -> Self {
        Self::spawn(Worker::new(client_address(address), None, RETRY_FOR))
    }

    fn spawn(worker: Worker) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(worker.run(rx));
        Self {
            tx,
            dropped: Arc::default(),
        }
    }

    /// Queues `event` under `topic` for containerd namespace `namespace`.
    pub fn publish(&self, topic: &str, namespace: &str, event: Box<dyn MessageDyn>) {
        let envelope = match (timestamp(), convert_to_any(event)) {
            (Ok(at), Ok(any)) => Envelope {
                timestamp: Some(at).into(),
                namespace: namespace.into(),
                topic: topic.into(),
                event: Some(any).into(),
                ..Default::default()
            },
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(topic, error = %e, "an event could not be encoded");
                return;
            }
        };
        if let Err(e) = self.tx.try_send(Item::Event(envelope)) {
            self.dropped.store(true, Ordering::Relaxed);
            tracing::warn!(topic, error = %e, "an event was dropped: the queue to containerd is full");
        }
    }

    /// Waits, until `within` has passed, for every event queued before
    /// this call to be delivered or given up on: true if all of them
    /// (and all since the previous flush) reached containerd.
    pub async fn flush(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let (done, delivered) = oneshot::channel();
        let queued = tokio::time::timeout_at(deadline, self.tx.send(Item::Flush(done)));
        let Ok(Ok(())) = queued.await else {
            return false;
        };
        let all = matches!(
            tokio::time::timeout_at(deadline, delivered).await,
            Ok(Ok(true))
        );
        all & !self.dropped.swap(false, Ordering::Relaxed)
    }
}

/// Whether containerd's refusal may not hold the next time.
fn transient(status: &ttrpc::Status) -> bool {
    use ttrpc::Code;
    matches!(
        status.code(),
        Code::UNAVAILABLE | Code::DEADLINE_EXCEEDED | Code::RESOURCE_EXHAUSTED | Code::ABORTED
    )
}

impl Worker {
    fn new(address: String, client: Option<EventsClient>, retry_for: Duration) -> Self {
        Self {
            address,
            client,
            retry_for,
            lost: false,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Item>) {
        while let Some(item) = rx.recv().await {
            match item {
                Item::Flush(done) => {
                    let _ = done.send(!std::mem::take(&mut self.lost));
                }
                Item::Event(envelope) => {
                    if !self.deliver(envelope).await {
                        self.lost = true;
                    }
                }
            }
        }
    }

    /// Forwards one event, reconnecting and retrying before the next one
    /// is taken, so events reach containerd in order. False if it was
    /// given up on.
    async fn deliver(&mut self, envelope: Envelope) -> bool {
        let topic = envelope.topic.clone();
        let req = ForwardRequest {
            envelope: Some(envelope).into(),
            ..Default::default()
        };
        let until = Instant::now() + self.retry_for;
        let mut pause = FIRST_PAUSE;
        loop {
            let error = match self.forward(&req).await {
                Ok(()) => return true,
                // containerd answered, and refused: asking again does
                // not change its answer (unless it was busy).
                Err(ttrpc::Error::RpcStatus(status)) if !transient(&status) => {
                    tracing::warn!(topic, error = ?status, "containerd refused an event");
                    return false;
                }
                // Busy, over a connection that works.
                Err(e @ ttrpc::Error::RpcStatus(_)) => e.to_string(),
                Err(e) => {
                    // A fresh connection for the next try.
                    self.client = None;
                    e.to_string()
                }
            };
            if Instant::now() + pause > until {
                tracing::warn!(topic, error, "an event to containerd was given up on");
                return false;
            }
            tracing::debug!(topic, error, "forwarding an event failed; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    async fn forward(&mut self, req: &ForwardRequest) -> Result<(), ttrpc::Error> {
        let client = match &self.client {
            Some(c) => c,
            None => {
                let c = ttrpc::r#async::Client::connect(&self.address).await?;
                self.client.insert(EventsClient::new(c))
            }
        };
        let ctx = ttrpc::context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
        client.forward(ctx, req).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::events::task::TaskStart;
    use containerd_shim_protos::protobuf::Message;
    use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
    use containerd_shim_protos::shim_async::{Events, create_events};
    use std::sync::{Arc, Mutex};

    /// containerd's event service, as far as shims use it: the topics
    /// and container ids forwarded to it, in order.
    #[derive(Default)]
    struct Received(Mutex<Vec<String>>, std::sync::atomic::AtomicBool);

    #[async_trait::async_trait]
    impl Events for Received {
        async fn forward(
            &self,
            _ctx: &ttrpc::r#async::TtrpcContext,
            req: ForwardRequest,
        ) -> ttrpc::Result<Empty> {
            let ev = req.envelope.unwrap_or_default();
            let any = ev.event.unwrap_or_default();
            // containerd takes the bare message name as the type.
            assert_eq!(any.type_url, "containerd.events.TaskStart");
            let start = TaskStart::parse_from_bytes(&any.value).unwrap();
            // Busy the first time it is asked.
            if start.container_id == "busy" && !self.1.swap(true, Ordering::Relaxed) {
                return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::UNAVAILABLE,
                    "try again",
                )));
            }
            if start.container_id == "refused" {
                return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::INVALID_ARGUMENT,
                    "no such namespace",
                )));
            }
            self.0.lock().unwrap().push(format!(
                "{} {} {}",
                ev.namespace, ev.topic, start.container_id
            ));
            Ok(Empty::new())
        }
    }

    fn serve(path: &std::path::Path) -> (ttrpc::r#async::Server, Arc<Received>) {
        let received = Arc::new(Received::default());
        let server = ttrpc::r#async::Server::new()
            .bind(&format!("unix://{}", path.display()))
            .unwrap()
            .register_service(create_events(received.clone()));
        (server, received)
    }

    /// A running event service and a publisher connected to it.
    async fn running() -> (
        tempfile::TempDir,
        ttrpc::r#async::Server,
        Arc<Received>,
        Publisher,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ttrpc.sock");
        let (mut server, received) = serve(&path);
        server.start().await.unwrap();
        let publisher = Publisher::connect(path.to_str().unwrap()).await.unwrap();
        (dir, server, received, publisher)
    }

    fn start(id: &str) -> Box<dyn MessageDyn> {
        Box::new(TaskStart {
            container_id: id.into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn events_arrive_in_order_before_the_flush_returns() {
        let (_dir, mut server, received, publisher) = running().await;
        for id in ["a", "b", "c"] {
            publisher.publish("/tasks/start", "k8s.io", start(id));
        }
        assert!(publisher.flush(Duration::from_secs(10)).await);
        assert_eq!(
            *received.0.lock().unwrap(),
            [
                "k8s.io /tasks/start a",
                "k8s.io /tasks/start b",
                "k8s.io /tasks/start c"
            ]
        );
        let _ = server.shutdown().await;
    }

    #[tokio::test]
    async fn events_wait_for_containerd_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ttrpc.sock");
        // Nothing listens yet: the first tries fail.
        let publisher = Publisher::lazy(path.to_str().unwrap());
        publisher.publish("/tasks/start", "default", start("first"));
        publisher.publish("/tasks/start", "default", start("second"));
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (mut server, received) = serve(&path);
        server.start().await.unwrap();
        assert!(publisher.flush(Duration::from_secs(10)).await);
        assert_eq!(
            *received.0.lock().unwrap(),
            ["default /tasks/start first", "default /tasks/start second"]
        );
        let _ = server.shutdown().await;
    }

    #[tokio::test]
    async fn an_event_containerd_refuses_does_not_hold_up_the_next() {
        let (_dir, mut server, received, publisher) = running().await;
        publisher.publish("/tasks/start", "k8s.io", start("refused"));
        publisher.publish("/tasks/start", "k8s.io", start("busy"));
        publisher.publish("/tasks/start", "k8s.io", start("next"));
        assert!(!publisher.flush(Duration::from_secs(10)).await);
        // A busy containerd is asked again, before the next event.
        assert_eq!(
            *received.0.lock().unwrap(),
            ["k8s.io /tasks/start busy", "k8s.io /tasks/start next"]
        );
        assert!(received.1.load(Ordering::Relaxed));
        let _ = server.shutdown().await;
    }

    #[tokio::test]
    async fn an_unreachable_containerd_is_reported_and_given_up_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let err = Publisher::connect(path.to_str().unwrap())
            .await
            .err()
            .unwrap();
        assert!(err.contains("containerd's event service"), "{err}");
        // A lazy one gives the event up after its tries, and the flush
        // says so, once.
        let publisher = Publisher::spawn(Worker::new(
            client_address(path.to_str().unwrap()),
            None,
            Duration::from_millis(400),
        ));
        publisher.publish("/tasks/start", "default", start("lost"));
        assert!(!publisher.flush(Duration::from_secs(10)).await);
        assert!(publisher.flush(Duration::from_secs(10)).await);
    }

    #[test]
    fn containerd_bare_ttrpc_paths_become_unix_addresses() {
        assert_eq!(
            client_address("/run/containerd/containerd.sock.ttrpc"),
            "unix:///run/containerd/containerd.sock.ttrpc"
        );
        assert_eq!(client_address("unix:///x.sock"), "unix:///x.sock");
    }
}
