//! Generates the ttrpc bindings (pure-Rust parser, no protoc): the CoCo guest
//! APIs from `protos/`, and the Kata agent API from `protos/kata/` into its
//! own directory, since its files refer to each other as sibling modules.

fn main() {
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    generate(
        &out,
        "protos",
        &[
            "protos/attestation-agent.proto",
            "protos/api.proto",
            "protos/pod.proto",
        ],
        &[
            "attestation_agent",
            "attestation_agent_ttrpc",
            "api",
            "api_ttrpc",
            "pod",
            "pod_ttrpc",
        ],
    );
    let kata_out = format!("{out}/kata");
    std::fs::create_dir_all(&kata_out).expect("create kata output directory");
    generate(
        &kata_out,
        "protos/kata",
        &[
            "protos/kata/types.proto",
            "protos/kata/oci.proto",
            "protos/kata/agent.proto",
            "protos/kata/health.proto",
        ],
        &[
            "types",
            "oci",
            "agent",
            "agent_ttrpc",
            "health",
            "health_ttrpc",
        ],
    );
    println!("cargo:rerun-if-changed=protos");
}

fn generate(out: &str, include: &str, inputs: &[&str], generated: &[&str]) {
    ttrpc_codegen::Codegen::new()
        .out_dir(out)
        .inputs(inputs)
        .include(include)
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("ttrpc codegen");
    // The generated files carry inner attributes, which `include!` rejects.
    for name in generated {
        let path = format!("{out}/{name}.rs");
        let text = std::fs::read_to_string(&path).expect("generated file");
        let kept: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with("#!["))
            .map(|l| l.replacen("//!", "//", 1))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("rewrite generated file");
    }
}
