//! Generates the ttrpc bindings from the CoCo protos (pure-Rust parser, no protoc).

fn main() {
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(["protos/attestation-agent.proto", "protos/api.proto"])
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("ttrpc codegen");
    // The generated files carry inner attributes, which `include!` rejects.
    for name in [
        "attestation_agent",
        "attestation_agent_ttrpc",
        "api",
        "api_ttrpc",
    ] {
        let path = format!("{out}/{name}.rs");
        let text = std::fs::read_to_string(&path).expect("generated file");
        let kept: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with("#!["))
            .map(|l| l.replacen("//!", "//", 1))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("rewrite generated file");
    }
    println!("cargo:rerun-if-changed=protos");
}
