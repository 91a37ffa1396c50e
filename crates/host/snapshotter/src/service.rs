//! `containerd.services.snapshots.v1.Snapshots` over the store.

use crate::policy::{GuestPull, TARGET};
use crate::store::{Kind, Snap, Store, StoreError};
use cocoon_host_grpc::containerd::types as ctypes;
use cocoon_host_grpc::snapshots as pb;
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The service.
#[derive(Clone)]
pub struct Service {
    store: Arc<Store>,
    guest_pull: Arc<GuestPull>,
}

impl Service {
    /// A service over `store`, deciding remote layers with `guest_pull`.
    pub fn new(store: Store, guest_pull: GuestPull) -> Self {
        Self {
            store: Arc::new(store),
            guest_pull: Arc::new(guest_pull),
        }
    }
}

fn status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(_) => Status::not_found(e.to_string()),
        StoreError::AlreadyExists(_) => Status::already_exists(e.to_string()),
        StoreError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
        StoreError::Invalid(_) => Status::invalid_argument(e.to_string()),
        StoreError::Io(..) => Status::internal(e.to_string()),
    }
}

fn mounts(m: Vec<crate::store::Mount>) -> Vec<ctypes::Mount> {
    m.into_iter()
        .map(|m| ctypes::Mount {
            r#type: m.typ,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn info(name: &str, s: &Snap) -> pb::Info {
    pb::Info {
        name: name.into(),
        parent: s.parent.clone(),
        kind: match s.kind {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        } as i32,
        created_at: Some(prost_types::Timestamp {
            seconds: s.created,
            nanos: 0,
        }),
        updated_at: Some(prost_types::Timestamp {
            seconds: s.updated,
            nanos: 0,
        }),
        labels: s.labels.clone().into_iter().collect(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)
}

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for Service {
    async fn prepare(
        &self,
        r: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = r.into_inner();
        let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
        let (store, guest_pull) = (self.store.clone(), self.guest_pull.clone());
        // The decision may read a manifest from disk: off the async threads.
        let prepared = blocking(move || {
            if let Some(target) = labels.get(TARGET).cloned()
                && guest_pull.wants(&labels)
            {
                // The layer is pulled in the guest: the target exists
                // (empty), and containerd skips fetching and unpacking it.
                return match store.commit_remote(&target, &r.parent, labels) {
                    Ok(()) | Err(StoreError::AlreadyExists(_)) => Ok(Err(target)),
                    Err(e) => Err(e),
                };
            }
            store
                .create(Kind::Active, &r.key, &r.parent, labels)
                .map(Ok)
        })
        .await?;
        match prepared {
            Ok(m) => Ok(Response::new(pb::PrepareSnapshotResponse {
                mounts: mounts(m),
            })),
            Err(target) => {
                tracing::info!(target = %target, "layer left to the guest");
                Err(Status::already_exists(format!(
                    "target snapshot {target} already exists"
                )))
            }
        }
    }

    async fn view(
        &self,
        r: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = r.into_inner();
        let store = self.store.clone();
        let labels = r.labels.into_iter().collect();
        let m = blocking(move || store.create(Kind::View, &r.key, &r.parent, labels)).await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn mounts(
        &self,
        r: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let r = r.into_inner();
        let store = self.store.clone();
        let m = blocking(move || store.mounts(&r.key)).await?;
        Ok(Response::new(pb::MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(&self, r: Request<pb::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        let store = self.store.clone();
        let labels = r.labels.into_iter().collect();
        blocking(move || store.commit(&r.name, &r.key, labels)).await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, r: Request<pb::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        let store = self.store.clone();
        blocking(move || store.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        r: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = r.into_inner();
        let s = self.store.stat(&r.key).map_err(status)?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info(&r.key, &s)),
        }))
    }

    async fn update(
        &self,
        r: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = r.into_inner();
        let i = r
            .info
            .ok_or_else(|| Status::invalid_argument("update needs an info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let store = self.store.clone();
        let name = i.name.clone();
        let s =
            blocking(move || store.update_labels(&i.name, i.labels.into_iter().collect(), &paths))
                .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info(&name, &s)),
        }))
    }

    type ListStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<pb::ListSnapshotsResponse, Status>>>;

    async fn list(
        &self,
        _r: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        // containerd filters on its side; every snapshot is listed, in
        // messages of up to 100.
        let list = self.store.list();
        let mut infos = list.iter().map(|(k, s)| info(k, s)).peekable();
        let mut batches = Vec::new();
        while infos.peek().is_some() {
            batches.push(Ok(pb::ListSnapshotsResponse {
                info: infos.by_ref().take(100).collect(),
            }));
        }
        Ok(Response::new(tokio_stream::iter(batches)))
    }

    async fn usage(
        &self,
        r: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let r = r.into_inner();
        let store = self.store.clone();
        let (size, inodes) = blocking(move || store.usage(&r.key)).await?;
        Ok(Response::new(pb::UsageResponse { size, inodes }))
    }

    async fn cleanup(&self, _r: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let store = self.store.clone();
        blocking(move || store.cleanup()).await?;
        Ok(Response::new(()))
    }
}
