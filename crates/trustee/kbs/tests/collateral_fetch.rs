//! Collateral fetched over HTTP by the trustee's client from a PCCS and an
//! AMD KDS stand-in: a real HTTP server on 127.0.0.1 serving Intel's and
//! AMD's real signed documents in the services' formats (paths, headers,
//! encodings). The documents are verified exactly as fetched, and kept.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use cocoon_kbs::fetch::Fetcher;
use cocoon_verifier::snp::{SnpVerifier, VcekSource};
use cocoon_verifier::tdx::collateral::{Collateral, CollateralSet};
use cocoon_verifier::tdx::pccs::Pccs;
use cocoon_verifier::tdx::quote::{SgxQuote, TdxQuote};
use cocoon_verifier::tdx::{self, TdxCache};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const FIXTURES: cocoon_fixtures::Dir = cocoon_fixtures::Dir("");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn collateral(name: &str) -> Collateral {
    serde_json::from_slice(&fixture(name)).unwrap()
}

/// 2025-06-25, inside the DCAP collateral's window.
const IN_WINDOW: u64 = 1_750_809_600;

#[derive(Clone, Default)]
struct Served {
    tdx: Option<Collateral>,
    sgx: Option<Collateral>,
    vcek: Vec<u8>,
    log: Arc<Mutex<Vec<String>>>,
    /// Serve a TCB info changed after signing.
    tamper: Arc<Mutex<bool>>,
}

fn encoded(pem: &str) -> HeaderValue {
    let mut out = String::new();
    for b in pem.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap()
}

async fn server(s: Served) -> String {
    let logged = |s: &Served, what: String| s.log.lock().unwrap().push(what);
    let pick = |s: &Served, kind: &str| -> Collateral {
        if kind == "tdx" {
            s.tdx.clone()
        } else {
            s.sgx.clone()
        }
        .unwrap()
    };
    let app = axum::Router::new()
        .route(
            "/sgx/certification/v4/pckcrl",
            get(move |State(s): State<Served>, Query(q): Query<HashMap<String, String>>| async move {
                logged(&s, format!("pckcrl {}", q["ca"]));
                // The TDX quote's PCK is from the Platform CA, the SGX
                // quote's from the Processor CA.
                let c = if q["ca"] == "processor" { s.sgx.clone() } else { s.tdx.clone() }.unwrap();
                let mut h = HeaderMap::new();
                h.insert("SGX-PCK-CRL-Issuer-Chain", encoded(&c.pck_crl_issuer_chain));
                (h, hex::decode(&c.pck_crl).unwrap())
            }),
        )
        .route(
            "/sgx/certification/v4/rootcacrl",
            get(move |State(s): State<Served>| async move {
                logged(&s, "rootcacrl".into());
                // PCCS serves it as hex text.
                [s.tdx.clone(), s.sgx.clone()].into_iter().flatten().next().unwrap().root_ca_crl
            }),
        )
        .route(
            "/{kind}/certification/v4/tcb",
            get(move |State(s): State<Served>, Path(kind): Path<String>, Query(q): Query<HashMap<String, String>>| async move {
                logged(&s, format!("tcb {kind} {}", q["fmspc"]));
                let c = pick(&s, &kind);
                let mut info = c.tcb_info.clone();
                if *s.tamper.lock().unwrap() {
                    info = info.replacen("UpToDate", "UpToDatE", 1);
                }
                let mut h = HeaderMap::new();
                h.insert("TCB-Info-Issuer-Chain", encoded(&c.tcb_info_issuer_chain));
                (h, format!("{{\"tcbInfo\":{info},\"signature\":\"{}\"}}", c.tcb_info_signature))
            }),
        )
        .route(
            "/{kind}/certification/v4/qe/identity",
            get(move |State(s): State<Served>, Path(kind): Path<String>| async move {
                logged(&s, format!("qe {kind}"));
                let c = pick(&s, &kind);
                let mut h = HeaderMap::new();
                h.insert("SGX-Enclave-Identity-Issuer-Chain", encoded(&c.qe_identity_issuer_chain));
                (h, format!("{{\"enclaveIdentity\":{},\"signature\":\"{}\"}}", c.qe_identity, c.qe_identity_signature))
            }),
        )
        .route(
            "/vcek/v1/{product}/{hwid}",
            get(move |State(s): State<Served>, Path((product, hwid)): Path<(String, String)>, Query(q): Query<HashMap<String, String>>| async move {
                let mut keys: Vec<_> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
                keys.sort();
                logged(&s, format!("vcek {product} {}… {}", &hwid[..16], keys.join("&")));
                // Like AMD KDS: only the chip the VCEK was issued for.
                let known = hex::encode(&fixture("snp/trustee_snp_report.bin")[0x1a0..0x1e0]);
                if product == "Milan" && hwid == known {
                    s.vcek.clone().into_response()
                } else {
                    StatusCode::NOT_FOUND.into_response()
                }
            }),
        )
        .with_state(s);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn requests(s: &Served) -> Vec<String> {
    s.log.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dcap_collateral_from_a_pccs() {
    let served = Served {
        tdx: Some(collateral("tdx/dcapqvl_tdx_quote_collateral.json")),
        sgx: Some(collateral("sgx/dcapqvl_sgx_quote_collateral.json")),
        ..Default::default()
    };
    let url = server(served.clone()).await;
    let url2 = url.clone();
    let tq = TdxQuote::parse(&fixture("tdx/dcapqvl_tdx_quote.bin")).unwrap();
    let sq = SgxQuote::parse(&fixture("sgx/dcapqvl_sgx_quote.bin")).unwrap();
    let served0 = served.clone();
    let check = tokio::task::spawn_blocking(move || {
        let set =
            CollateralSet::default().with_pccs(Pccs::new(&url, Arc::new(Fetcher::new().unwrap())));
        // Where fetching is deferred (the trustee's async workers), a quote
        // whose collateral is not kept asks for none and says so.
        let deferred = cocoon_types::inline::without_blocking(|| {
            tdx::verify_quote_with(&tq, None, Some(&set), IN_WINDOW, &TdxCache::default())
        });
        assert!(deferred.is_none());
        assert!(requests(&served0).is_empty());
        // The same verdicts as with the collateral files.
        let fetched =
            tdx::verify_quote_with(&tq, None, Some(&set), IN_WINDOW, &TdxCache::default())
                .unwrap()
                .unwrap();
        // Kept collateral needs no fetch: verified where fetching is deferred.
        let kept = cocoon_types::inline::without_blocking(|| {
            tdx::verify_quote_with(&tq, None, Some(&set), IN_WINDOW, &TdxCache::default())
        })
        .expect("kept collateral, nothing to fetch")
        .unwrap()
        .unwrap();
        assert_eq!(kept.tcb_status(), fetched.tcb_status());
        let local = tdx::verify_quote(
            &tq,
            Some(&collateral("tdx/dcapqvl_tdx_quote_collateral.json")),
            IN_WINDOW,
            &TdxCache::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(fetched.tcb_status(), local.tcb_status());
        assert_eq!(fetched.fmspc, "B0C06F000000");
        let sgx = cocoon_verifier::sgx::verify_quote_with(
            &sq,
            None,
            Some(&set),
            IN_WINDOW,
            &TdxCache::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(sgx.fmspc, "00A067110000");
        // Kept: a second verification (fresh verdict cache) fetches nothing.
        tdx::verify_quote_with(&tq, None, Some(&set), IN_WINDOW + 60, &TdxCache::default())
            .unwrap();
        // A quote whose PCK chain is broken (the SGX quote's Processor CA
        // in place of the Platform CA that issued the PCK) finds the kept
        // collateral by its FMSPC, is refused, and does not make the set
        // drop it: the next quote fetches nothing.
        let pem = |q: &[u8]| String::from_utf8(q.to_vec()).unwrap();
        let (tdx_pem, sgx_pem) = (pem(&tq.qe.pck_chain_pem), pem(&sq.qe.pck_chain_pem));
        let nth = |p: &str, n: usize| {
            let starts: Vec<usize> = p.match_indices("-----BEGIN").map(|(i, _)| i).collect();
            p[starts[n]..starts.get(n + 1).copied().unwrap_or(p.len())].to_string()
        };
        let mut broken = tq.clone();
        broken.qe.pck_chain_pem = format!(
            "{}{}{}",
            nth(&tdx_pem, 0),
            nth(&sgx_pem, 1),
            nth(&tdx_pem, 2)
        )
        .into_bytes();
        let e = tdx::verify_quote_with(&broken, None, Some(&set), IN_WINDOW, &TdxCache::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not chain to Intel's SGX Root CA")
                && e.contains("Intel SGX PCK Certificate chains to no trusted certificate"),
            "{e}"
        );
        tdx::verify_quote_with(&tq, None, Some(&set), IN_WINDOW + 120, &TdxCache::default())
            .unwrap();
        set
    })
    .await
    .unwrap();
    let log = requests(&served);
    assert_eq!(
        log.iter()
            .filter(|r| r.starts_with("tcb tdx B0C06F000000"))
            .count(),
        1,
        "{log:?}"
    );
    assert!(log.contains(&"pckcrl platform".to_string()), "{log:?}");
    assert!(log.contains(&"qe sgx".to_string()), "{log:?}");
    assert!(log.iter().any(|r| r == "tcb sgx 00A067110000"), "{log:?}");
    // Past nextUpdate it is fetched again; the PCCS still serves the old
    // documents, so the verification fails as expired.
    let served2 = served.clone();
    let e = tokio::task::spawn_blocking(move || {
        let tq = TdxQuote::parse(&fixture("tdx/dcapqvl_tdx_quote.bin")).unwrap();
        let e = tdx::verify_quote_with(
            &tq,
            None,
            Some(&check),
            IN_WINDOW + 40 * 86_400,
            &TdxCache::default(),
        )
        .unwrap_err()
        .to_string();
        // A TCB info changed after Intel signed it is refused.
        *served2.tamper.lock().unwrap() = true;
        let fresh =
            CollateralSet::default().with_pccs(Pccs::new(&url2, Arc::new(Fetcher::new().unwrap())));
        let t = tdx::verify_quote_with(&tq, None, Some(&fresh), IN_WINDOW, &TdxCache::default())
            .unwrap_err()
            .to_string();
        // What did not verify was not kept: once the PCCS serves the signed
        // document again, the same set fetches it and the quote verifies.
        *served2.tamper.lock().unwrap() = false;
        tdx::verify_quote_with(&tq, None, Some(&fresh), IN_WINDOW, &TdxCache::default())
            .unwrap()
            .unwrap();
        (e, t)
    })
    .await
    .unwrap();
    assert!(e.0.contains("expired"), "{}", e.0);
    assert!(e.1.contains("TCB info signature"), "{}", e.1);
    assert_eq!(
        requests(&served)
            .iter()
            .filter(|r| r.starts_with("tcb tdx"))
            .count(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcek_from_kds_and_from_a_directory() {
    let served = Served {
        vcek: fixture("snp/trustee_snp_vcek.der"),
        ..Default::default()
    };
    let url = server(served.clone()).await;
    let report = fixture("snp/trustee_snp_report.bin");
    let now = 1_700_000_000;
    let r = report.clone();
    let served0 = served.clone();
    tokio::task::spawn_blocking(move || {
        let mut v = SnpVerifier::new().unwrap();
        v.vcek_source = Some(Arc::new(
            VcekSource::default().with_kds(&url, Arc::new(Fetcher::new().unwrap())),
        ));
        // Deferred fetching: nothing asked, and no failure remembered (the
        // fetch right after is not refused as "asked a moment ago").
        let deferred = cocoon_types::inline::without_blocking(|| v.verify_with_source(&r, now));
        assert!(deferred.is_none());
        assert!(requests(&served0).is_empty());
        let c = v.verify_with_source(&r, now).unwrap();
        assert_eq!(c.signing_key, "VCEK");
        v.verify_with_source(&r, now).unwrap();
        let kept = cocoon_types::inline::without_blocking(|| v.verify_with_source(&r, now))
            .expect("a kept VCEK, nothing to fetch");
        assert_eq!(kept.unwrap().signing_key, "VCEK");
        // A chip the KDS does not know: asked once, then remembered.
        let mut other = r.clone();
        other[0x1a0] ^= 1;
        let e = v.verify_with_source(&other, now).unwrap_err().to_string();
        assert!(e.contains("could not be fetched from AMD KDS"), "{e}");
        let e = v.verify_with_source(&other, now).unwrap_err().to_string();
        assert!(e.contains("not asking again yet"), "{e}");
        // No source: the error says how to give one.
        let bare = SnpVerifier::new().unwrap();
        let e = bare.verify_with_source(&r, now).unwrap_err().to_string();
        assert!(e.contains("--snp-kds-url"), "{e}");
    })
    .await
    .unwrap();
    let log = requests(&served);
    let chip = hex::encode(&report[0x1a0..0x1a8]);
    let vcek: Vec<_> = log
        .iter()
        .filter(|l| l.starts_with(&format!("vcek Milan {chip}")))
        .collect();
    assert_eq!(vcek.len(), 1, "fetched once, then kept: {log:?}");
    // The unknown chip: Milan and Genoa asked once (a v2 report has no
    // CPUID), not again.
    assert_eq!(
        log.iter().filter(|l| l.starts_with("vcek")).count(),
        3,
        "{log:?}"
    );
    let chip = hex::encode(&report[0x1a0..0x1a8]);
    assert!(
        vcek[0].starts_with(&format!("vcek Milan {chip}… blSPL=")),
        "{}",
        vcek[0]
    );
    assert!(
        vcek[0].contains("snpSPL=") && vcek[0].contains("ucodeSPL=") && vcek[0].contains("teeSPL=")
    );

    // A directory holding the VCEK among others.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vcek.der"),
        fixture("snp/trustee_snp_vcek.der"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("old.der"),
        fixture("snp/trustee_snp_vcek_invalid_new.der"),
    )
    .unwrap();
    let mut v = SnpVerifier::new().unwrap();
    v.vcek_source = Some(Arc::new(VcekSource::from_dir(dir.path()).unwrap()));
    v.verify_with_source(&report, now).unwrap();
    let mut bad = report.clone();
    bad[0x90] ^= 1;
    assert!(v.verify_with_source(&bad, now).is_err());

    // A KDS answering with a VCEK that does not chain to AMD: refused, not
    // kept, not asked again for a while; a directory VCEK is still found
    // first whatever the KDS does.
    let broken = Served {
        vcek: fixture("snp/trustee_snp_vcek_invalid_new.der"),
        ..Default::default()
    };
    let broken_url = server(broken.clone()).await;
    let dir_path = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let fetcher = Arc::new(Fetcher::new().unwrap());
        let mut v = SnpVerifier::new().unwrap();
        v.vcek_source = Some(Arc::new(
            VcekSource::default().with_kds(&broken_url, fetcher.clone()),
        ));
        let e = v.verify_with_source(&report, now).unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");
        let e = v.verify_with_source(&report, now).unwrap_err().to_string();
        assert!(e.contains("not asking again yet"), "{e}");
        let mut both = SnpVerifier::new().unwrap();
        both.vcek_source = Some(Arc::new(
            VcekSource::from_dir(&dir_path)
                .unwrap()
                .with_kds(&broken_url, fetcher),
        ));
        both.verify_with_source(&report, now).unwrap();
    })
    .await
    .unwrap();
    assert_eq!(
        requests(&broken)
            .iter()
            .filter(|l| l.starts_with("vcek"))
            .count(),
        1,
        "asked once: {:?}",
        requests(&broken)
    );
}
