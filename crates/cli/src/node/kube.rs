//! The node's labels, set through the Kubernetes API with the credentials
//! kube-rs finds (in a pod: its service account; else the kubeconfig).

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};

async fn patch(node: &str, labels: serde_json::Map<String, serde_json::Value>) -> Result<()> {
    let client = kube::Client::try_default().await.context(
        "no Kubernetes API credentials (service account or kubeconfig) to label the node",
    )?;
    patch_with(client, node, labels).await
}

/// A JSON merge patch of the node's labels (a `null` removes one; other
/// labels stay).
async fn patch_with(
    client: kube::Client,
    node: &str,
    labels: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client);
    let body = serde_json::json!({ "metadata": { "labels": labels } });
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .with_context(|| format!("labelling node {node}"))?;
    Ok(())
}

fn set(labels: &[(String, String)]) -> serde_json::Map<String, serde_json::Value> {
    labels
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect()
}

fn unset(keys: &[String]) -> serde_json::Map<String, serde_json::Value> {
    keys.iter()
        .map(|k| (k.clone(), serde_json::Value::Null))
        .collect()
}

/// Sets `labels` on `node` and removes `keys`, in one patch.
pub async fn relabel(node: &str, labels: &[(String, String)], keys: &[String]) -> Result<()> {
    let mut map = set(labels);
    map.extend(unset(keys));
    patch(node, map).await
}

/// Removes `keys` from `node`'s labels.
pub async fn unlabel(node: &str, keys: &[String]) -> Result<()> {
    patch(node, unset(keys)).await
}

#[cfg(test)]
mod tests {
    //! No API server runs here: a loopback HTTP endpoint answers as the
    //! API server's node endpoint does and keeps what it was sent.
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    /// Serves one request with `status` and `body`; returns the request
    /// line, the content type and the body it received.
    async fn one_request(
        listener: tokio::net::TcpListener,
        status: &'static str,
        body: &'static str,
    ) -> (String, String, serde_json::Value) {
        let (stream, _) = listener.accept().await.unwrap();
        let mut r = BufReader::new(stream);
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        let (mut len, mut ctype) = (0usize, String::new());
        loop {
            let mut h = String::new();
            r.read_line(&mut h).await.unwrap();
            let h = h.trim_end().to_string();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap(),
                "content-type" => ctype = v.trim().to_string(),
                _ => {}
            }
        }
        let mut buf = vec![0; len];
        r.read_exact(&mut buf).await.unwrap();
        let reply = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        r.get_mut().write_all(reply.as_bytes()).await.unwrap();
        (
            line.trim_end().to_string(),
            ctype,
            serde_json::from_slice(&buf).unwrap(),
        )
    }

    async fn client_for(listener: &tokio::net::TcpListener) -> kube::Client {
        let url = format!("http://{}", listener.local_addr().unwrap());
        kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
    }

    #[tokio::test]
    async fn labels_are_a_merge_patch_of_the_node_and_a_refusal_is_named() {
        let node = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"worker-1"}}"#;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = client_for(&l).await;
        let server = tokio::spawn(one_request(l, "200 OK", node));
        let labels = set(&[("cocoon.io/runtime".into(), "true".into())]);
        patch_with(client, "worker-1", labels).await.unwrap();
        let (line, ctype, body) = server.await.unwrap();
        assert!(line.starts_with("PATCH /api/v1/nodes/worker-1"), "{line}");
        assert_eq!(ctype, "application/merge-patch+json");
        assert_eq!(
            body,
            serde_json::json!({"metadata": {"labels": {"cocoon.io/runtime": "true"}}})
        );

        // Removal: the keys set to null.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = client_for(&l).await;
        let server = tokio::spawn(one_request(l, "200 OK", node));
        patch_with(
            client,
            "worker-1",
            unset(&["cocoon.io/runtime".into(), "cocoon.io/tdx".into()]),
        )
        .await
        .unwrap();
        let (_, _, body) = server.await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({"metadata": {"labels": {"cocoon.io/runtime": null, "cocoon.io/tdx": null}}})
        );

        // A refusal (the admission policy, RBAC) says which node and why.
        let denied = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"the Cocoon installer may change only the node it runs on","reason":"Invalid","code":422}"#;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = client_for(&l).await;
        let server = tokio::spawn(one_request(l, "422 Unprocessable Entity", denied));
        let e = patch_with(
            client,
            "worker-2",
            set(&[("cocoon.io/runtime".into(), "true".into())]),
        )
        .await
        .unwrap_err();
        server.await.unwrap();
        let e = format!("{e:#}");
        assert!(
            e.contains("labelling node worker-2") && e.contains("only the node it runs on"),
            "{e}"
        );
    }
}
