//! Requests as the agent policy sees them: a message turned into JSON the
//! way Kata's agent serializes its protocol types for its policy engine,
//! so policies written for Kata's agent read the same `input`:
//!
//! - field names are the proto names, except that a Rust keyword gets a
//!   trailing underscore (`type` is `type_`), as rust-protobuf names it;
//! - every field is present, scalars with their default value;
//! - an unset message field is `null`;
//! - enums are their numeric value, `bytes` an array of numbers, 64-bit
//!   integers plain JSON numbers, maps objects.

use protobuf::MessageDyn;
use protobuf::reflect::{ReflectValueRef, RuntimeFieldType, RuntimeType};
use serde_json::{Map, Value};

/// Rust keywords rust-protobuf suffixes with `_` in field names.
const KEYWORDS: &[&str] = &[
    "as", "async", "await", "box", "break", "const", "continue", "crate", "dyn", "else", "enum",
    "extern", "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move",
    "mut", "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true", "type",
    "unsafe", "use", "where", "while", "abstract", "become", "do", "final", "macro", "override",
    "priv", "typeof", "unsized", "virtual", "yield", "try",
];

/// The JSON name of a proto field.
pub fn field_name(proto: &str) -> String {
    if KEYWORDS.contains(&proto) {
        format!("{proto}_")
    } else {
        proto.to_string()
    }
}

/// `message` as policy input.
pub fn to_value(message: &dyn MessageDyn) -> Value {
    let descriptor = message.descriptor_dyn();
    let mut out = Map::new();
    for field in descriptor.fields() {
        let v = match field.runtime_field_type() {
            RuntimeFieldType::Singular(RuntimeType::Message(_)) => field
                .get_singular(message)
                .map_or(Value::Null, |v| value(&v)),
            RuntimeFieldType::Singular(_) => value(&field.get_singular_field_or_default(message)),
            RuntimeFieldType::Repeated(_) => Value::Array(
                field
                    .get_repeated(message)
                    .into_iter()
                    .map(|v| value(&v))
                    .collect(),
            ),
            RuntimeFieldType::Map(..) => {
                let mut m = Map::new();
                for (k, v) in &field.get_map(message) {
                    let key = match value(&k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    m.insert(key, value(&v));
                }
                Value::Object(m)
            }
        };
        out.insert(field_name(field.name()), v);
    }
    Value::Object(out)
}

fn value(v: &ReflectValueRef<'_>) -> Value {
    match v {
        ReflectValueRef::U32(n) => Value::from(*n),
        ReflectValueRef::U64(n) => Value::from(*n),
        ReflectValueRef::I32(n) => Value::from(*n),
        ReflectValueRef::I64(n) => Value::from(*n),
        ReflectValueRef::F32(n) => Value::from(f64::from(*n)),
        ReflectValueRef::F64(n) => Value::from(*n),
        ReflectValueRef::Bool(b) => Value::Bool(*b),
        ReflectValueRef::String(s) => Value::String((*s).to_string()),
        ReflectValueRef::Bytes(b) => Value::Array(b.iter().map(|x| Value::from(*x)).collect()),
        ReflectValueRef::Enum(_, n) => Value::from(*n),
        ReflectValueRef::Message(m) => to_value(&**m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kata::{agent, oci};

    #[test]
    fn requests_look_like_kata_serializes_them() {
        let mut process = oci::Process::new();
        process.Args = vec!["sh".into(), "-c".into()];
        process.User = Some(oci::User {
            UID: 1000,
            ..Default::default()
        })
        .into();
        let mut spec = oci::Spec::new();
        spec.Process = Some(process).into();
        spec.Mounts = vec![oci::Mount {
            destination: "/proc".into(),
            type_: "proc".into(),
            ..Default::default()
        }];
        spec.Annotations.insert(
            "io.kubernetes.cri.container-type".into(),
            "container".into(),
        );
        let req = agent::CreateContainerRequest {
            container_id: "c1".into(),
            OCI: Some(spec).into(),
            storages: vec![agent::Storage {
                driver: "image_guest_pull".into(),
                source: "registry/app:1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = to_value(&req);
        assert_eq!(v["container_id"], "c1");
        assert_eq!(v["exec_id"], "", "defaults are present");
        assert_eq!(v["sandbox_pidns"], false);
        assert_eq!(v["string_user"], Value::Null, "unset messages are null");
        assert_eq!(v["OCI"]["Process"]["Args"][1], "-c");
        assert_eq!(v["OCI"]["Process"]["User"]["UID"], 1000);
        assert_eq!(v["OCI"]["Process"]["Terminal"], false);
        assert_eq!(v["OCI"]["Root"], Value::Null);
        assert_eq!(v["OCI"]["Mounts"][0]["type_"], "proc");
        assert_eq!(
            v["OCI"]["Annotations"]["io.kubernetes.cri.container-type"],
            "container"
        );
        assert_eq!(v["storages"][0]["driver"], "image_guest_pull");
        assert!(v.get("special_fields").is_none());

        let w = to_value(&agent::WriteStreamRequest {
            data: vec![1, 2, 255],
            ..Default::default()
        });
        assert_eq!(w["data"], serde_json::json!([1, 2, 255]));
    }
}
