//! Compiles `protos/` with protox (no protoc needed) into tonic clients.

fn main() {
    let fds = protox::compile(["protos/cri.proto"], ["protos"]).expect("parse protos/cri.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)
        .expect("generate the CRI bindings");
    println!("cargo:rerun-if-changed=protos");
}
