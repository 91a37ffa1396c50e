//! The key-encryption key in a PKCS#11 token (SoftHSM2): sealing happens in
//! the token, the key cannot be read or exported from it, another token's
//! key opens nothing, and what goes wrong is said clearly. One test: the
//! token library reads its configuration once per process.

use cocoon_fixtures::softhsm::{MODULE, SoftHsm};
use cocoon_store::Kek;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

#[test]
fn a_token_kek_seals_inside_the_token_and_never_lets_the_key_out() {
    let hsm = SoftHsm::new("cocoon", "1234");
    hsm.add_token("other", "1234");
    // SAFETY: the only test of this binary, before anything reads the
    // environment from another thread.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &hsm.conf) };

    // Refusals, before any login succeeds (a login holds for the process).
    let wrong_pin = format!("pkcs11:token=cocoon;object=kek?module-path={MODULE}&pin-value=9999");
    let e = Kek::from_pkcs11_uri(&wrong_pin).unwrap_err().to_string();
    assert!(
        e.contains("logging in to token 'cocoon'") && e.contains("PIN is incorrect"),
        "{e}"
    );
    assert!(!e.contains("9999"), "the PIN is not in the message: {e}");
    let e = Kek::from_pkcs11_uri(&hsm.uri("kek").replace("token=cocoon", "token=absent"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no initialized token labelled 'absent'"), "{e}");
    let e = Kek::from_pkcs11_uri(&hsm.uri("kek").replace(MODULE, "/nonexistent/lib.so"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot load the PKCS#11 library /nonexistent/lib.so"),
        "{e}"
    );

    // First use creates the key in the token; sealed values round-trip,
    // stay bound to their name, and a flipped bit is caught.
    let kek = Kek::from_pkcs11_uri(&hsm.uri("kek")).unwrap();
    assert!(kek.is_in_token());
    let sealed = kek.seal("resources", "a/b/c", b"token-secret").unwrap();
    assert!(!sealed.windows(12).any(|w| w == b"token-secret"));
    assert_eq!(
        &*kek.open("resources", "a/b/c", &sealed).unwrap(),
        b"token-secret"
    );
    assert!(kek.open("resources", "a/b/d", &sealed).is_err());
    let mut t = sealed.clone();
    t[20] ^= 1;
    assert!(kek.open("resources", "a/b/c", &t).is_err());
    // The same key again (a restart finds it by its label).
    let again = Kek::from_pkcs11_uri(&hsm.uri("kek")).unwrap();
    assert_eq!(
        &*again.open("resources", "a/b/c", &sealed).unwrap(),
        b"token-secret"
    );
    // Another token's key of the same label opens nothing: the secrets
    // need this token.
    let other =
        Kek::from_pkcs11_uri(&hsm.uri("kek").replace("token=cocoon", "token=other")).unwrap();
    assert!(other.open("resources", "a/b/c", &sealed).is_err());
    // Nor does a file key.
    assert!(
        Kek::from_bytes(&[0; 32])
            .open("resources", "a/b/c", &sealed)
            .is_err()
    );
    // Many threads seal at once (sessions are pooled, one per thread in use).
    std::thread::scope(|s| {
        for i in 0..8 {
            let kek = &kek;
            s.spawn(move || {
                for j in 0..50 {
                    let name = format!("{i}/{j}");
                    let v = kek.seal("ns", &name, name.as_bytes()).unwrap();
                    assert_eq!(&*kek.open("ns", &name, &v).unwrap(), name.as_bytes());
                }
            });
        }
    });

    // The key as the token holds it: AES, sensitive and never extractable;
    // its value cannot be read, and wrapping it out fails.
    let ctx = Pkcs11::new(MODULE).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == "cocoon")
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from("1234"))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let keys = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(b"kek".to_vec()),
        ])
        .unwrap();
    assert_eq!(keys.len(), 1, "one key labelled kek");
    let key = keys[0];
    let info = session
        .get_attribute_info(key, &[AttributeType::Value])
        .unwrap();
    assert!(matches!(info[0], AttributeInfo::Sensitive), "{info:?}");
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::KeyType,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::AlwaysSensitive,
                AttributeType::Value,
            ],
        )
        .unwrap();
    assert!(
        attrs.contains(&Attribute::KeyType(KeyType::AES)),
        "{attrs:?}"
    );
    assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
    assert!(
        attrs.contains(&Attribute::NeverExtractable(true)),
        "{attrs:?}"
    );
    assert!(
        attrs.contains(&Attribute::AlwaysSensitive(true)),
        "{attrs:?}"
    );
    assert!(
        !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
        "the key's value came out: {attrs:?}"
    );
    let wrapper = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Wrap(true),
            ],
        )
        .unwrap();
    match session.wrap_key(&Mechanism::AesKeyWrap, wrapper, key) {
        Err(Error::Pkcs11(RvError::KeyUnextractable, _)) => {}
        other => panic!("wrapping the KEK out of the token: {other:?}"),
    }

    // A key of that label that the token would let out is refused.
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Extractable(true),
                Attribute::Label(b"loose".to_vec()),
            ],
        )
        .unwrap();
    let e = Kek::from_pkcs11_uri(&hsm.uri("loose"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not an AES-256 key that stays in the token"),
        "{e}"
    );
}
