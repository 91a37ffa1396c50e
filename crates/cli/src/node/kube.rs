//! The node's labels, set through the Kubernetes API with the credentials
//! kube-rs finds (in a pod: its service account; else the kubeconfig).

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};

async fn patch(node: &str, labels: serde_json::Map<String, serde_json::Value>) -> Result<()> {
    let client = kube::Client::try_default().await.context(
        "no Kubernetes API credentials (service account or kubeconfig) to label the node",
    )?;
    let nodes: Api<Node> = Api::all(client);
    let body = serde_json::json!({ "metadata": { "labels": labels } });
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .with_context(|| format!("labelling node {node}"))?;
    Ok(())
}

/// Sets `labels` on `node` (a merge patch: other labels stay).
pub async fn label(node: &str, labels: &[(String, String)]) -> Result<()> {
    let map = labels
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    patch(node, map).await
}

/// Removes `keys` from `node`'s labels.
pub async fn unlabel(node: &str, keys: &[String]) -> Result<()> {
    let map = keys
        .iter()
        .map(|k| (k.clone(), serde_json::Value::Null))
        .collect();
    patch(node, map).await
}
