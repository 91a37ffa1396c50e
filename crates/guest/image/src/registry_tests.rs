//! The registry client against loopback servers: challenges, auth files,
//! and where a login may go.

use super::*;

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
