//! The registry client against loopback servers: challenges, auth files,
//! and where a login may go.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

#[test]
fn challenge_parsing() {
    let p = parse_challenge(
        r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
    );
    assert_eq!(p["realm"], "https://auth.docker.io/token");
    assert_eq!(p["service"], "registry.docker.io");
    assert_eq!(p["scope"], "repository:library/busybox:pull");
}

/// A loopback HTTP server answering each request with `respond(head)`;
/// serves at most `max` connections.
fn serve(max: usize, respond: impl Fn(&str) -> String + Send + 'static) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max).flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                head.push_str(&line);
                line.clear();
            }
            let _ = (&stream).write_all(respond(&head).as_bytes());
        }
    });
    addr
}

fn authorization(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("authorization")
            .then(|| v.trim().to_string())
    })
}

/// A registry whose bearer challenge names a plain-HTTP token realm on
/// another port: the login is not sent there unless that host is
/// marked insecure; without a login, asking for an anonymous token is fine.
#[tokio::test]
async fn logins_go_only_to_https_or_insecure_realms() {
    let seen = Arc::new(Mutex::new(Vec::<Option<String>>::new()));
    let log = seen.clone();
    let token = serve(16, move |head| {
        log.lock().unwrap().push(authorization(head));
        let body = r#"{"token":"t"}"#;
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    });
    let realm = format!("http://{token}/token");
    let challenge = realm.clone();
    let registry = serve(16, move |_| {
        format!(
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{challenge}\",service=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    });
    let image = Reference::parse(&format!("{registry}/app:v1")).unwrap();
    let login = Credential {
        username: "alice".into(),
        password: Zeroizing::new("s3cret".into()),
    };
    let client = |insecure: &[String], login: Option<&Credential>| {
        RegistryClient::new(RegistryConfig {
            insecure: insecure.iter().cloned().collect(),
            credentials: login
                .map(|c| (registry.to_string(), c.clone()))
                .into_iter()
                .collect(),
            ..Default::default()
        })
        .unwrap()
    };

    let only_registry = [registry.to_string()];
    let err = client(&only_registry, Some(&login))
        .manifest(&image)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::InsecureRealm { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&realm), "{msg}");
    assert!(
        msg.contains(&format!("--insecure-registry {token}")),
        "{msg}"
    );
    assert!(seen.lock().unwrap().is_empty(), "nothing reached the realm");

    // Anonymous: no login to protect, the token request goes out bare.
    let err = client(&only_registry, None)
        .manifest(&image)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Denied { .. }), "{err}");
    assert_eq!(*seen.lock().unwrap(), vec![None]);

    // The realm's host marked insecure: the login goes there.
    seen.lock().unwrap().clear();
    let both = [registry.to_string(), token.to_string()];
    let err = client(&both, Some(&login))
        .manifest(&image)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("credentials refused"), "{err}");
    let basic = format!("Basic {}", B64.encode("alice:s3cret"));
    assert_eq!(*seen.lock().unwrap(), vec![Some(basic)]);
}

#[test]
fn auth_json_forms() {
    let json = br#"{"auths":{"https://r.example:5000/v1/":{"auth":"dXNlcjpwYTpzcw=="},"plain":{"username":"u","password":"p"},"empty":{}}}"#;
    let c = parse_auth_json(json).unwrap();
    assert_eq!(c["r.example:5000"].username, "user");
    assert_eq!(c["r.example:5000"].password.as_str(), "pa:ss");
    assert_eq!(c["plain"].username, "u");
    assert!(!c.contains_key("empty"));
    assert!(parse_auth_json(br#"{"auths":{"x":{"auth":"!!"}}}"#).is_err());
}

/// Each request's first line and Authorization header, in order.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A loopback registry that keeps connections open (HTTP/1.1 keep-alive),
/// counts them, and records each request's first line and Authorization.
/// `/v2/r/app/manifests/v1` needs `Bearer t`; `/token` gives `t` to
/// alice's login and `anon` to anyone else.
fn keep_alive_registry() -> (std::net::SocketAddr, Arc<AtomicUsize>, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let realm = Arc::new(Mutex::new(String::new()));
    let challenge = realm.clone();
    let (addr, conns) = crate::testing::keep_alive_server(move |head| {
        let first = head.lines().next().unwrap_or_default().to_string();
        let auth = authorization(head);
        log.lock().unwrap().push((first.clone(), auth.clone()));
        let basic = format!("Basic {}", B64.encode("alice:s3cret"));
        let (status, extra, body) = if first.contains("/token") {
            let token = if auth.as_deref() == Some(basic.as_str()) {
                "t"
            } else {
                "anon"
            };
            ("200 OK", String::new(), format!(r#"{{"token":"{token}"}}"#))
        } else if auth.as_deref() == Some("Bearer t") {
            (
                "200 OK",
                String::new(),
                r#"{"schemaVersion":2}"#.to_string(),
            )
        } else {
            (
                "401 Unauthorized",
                format!(
                    "WWW-Authenticate: Bearer realm=\"{}\",service=\"test\"\r\n",
                    challenge.lock().unwrap()
                ),
                String::new(),
            )
        };
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    });
    *realm.lock().unwrap() = format!("http://{addr}/token");
    (addr, conns, seen)
}

/// Clients made one after another over one HTTP client reuse its open
/// connection; clients made apart each open their own. Whatever they
/// share, a client's token is its own: a client without the login that
/// earned one never sends it.
#[tokio::test]
async fn clients_over_one_http_client_share_connections_not_tokens() {
    let (addr, conns, seen) = keep_alive_registry();
    let image = Reference::parse(&format!("{addr}/r/app:v1")).unwrap();
    let cfg = |login: bool| RegistryConfig {
        insecure: [addr.to_string()].into_iter().collect(),
        credentials: login
            .then(|| {
                (
                    addr.to_string(),
                    Credential {
                        username: "alice".into(),
                        password: Zeroizing::new("s3cret".into()),
                    },
                )
            })
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let conns_now = || conns.load(Ordering::SeqCst);

    // Apart: each client its own connection.
    for _ in 0..2 {
        RegistryClient::new(cfg(true))
            .unwrap()
            .manifest(&image)
            .await
            .unwrap();
    }
    assert_eq!(conns_now(), 2, "two clients apart, two connections");

    // Over one HTTP client: the second reuses the first's connection.
    let http = http_client(&[]).unwrap();
    let alice = RegistryClient::with_http(http.clone(), cfg(true));
    let fetched = alice.manifest(&image).await.unwrap();
    assert_eq!(fetched.bytes, br#"{"schemaVersion":2}"#);
    RegistryClient::with_http(http.clone(), cfg(true))
        .manifest(&image)
        .await
        .unwrap();
    assert_eq!(conns_now(), 3, "the shared client kept one connection");

    // Without the login, over the same connection: alice's token is not
    // sent, the anonymous one is refused.
    seen.lock().unwrap().clear();
    let err = RegistryClient::with_http(http, cfg(false))
        .manifest(&image)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Denied { .. }), "{err}");
    let sent: Vec<Option<String>> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, a)| a.clone())
        .collect();
    assert_eq!(
        sent,
        vec![None, None, Some("Bearer anon".to_string())],
        "manifest bare, token bare, manifest with the anonymous token"
    );
    assert_eq!(conns_now(), 3, "still the one connection");
}
