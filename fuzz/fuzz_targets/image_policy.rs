//! Arbitrary bytes as a signature policy, an image reference and an
//! auth.json.
#![no_main]

use cocoon_image::reference::Reference;
use cocoon_image::registry::parse_auth_json;
use cocoon_image::signature::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Policy::parse(data)
        && let Ok(r) = Reference::parse("r.io/a/b:c")
    {
        let _ = p.requirements_for(&r);
    }
    let _ = parse_auth_json(data);
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(r) = Reference::parse(s)
    {
        assert_eq!(Reference::parse(&r.to_string()).ok().as_ref(), Some(&r));
    }
});
