//! Compiles `protos/` with protox (no protoc needed): CRI clients for
//! `cocoon pod`, the snapshotter server for `cocoon-snapshotter`.

fn main() {
    let cri = protox::compile(["protos/cri.proto"], ["protos"]).expect("parse protos/cri.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(cri)
        .expect("generate the CRI bindings");
    let snapshots = protox::compile(["protos/snapshots.proto"], ["protos"])
        .expect("parse protos/snapshots.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(snapshots)
        .expect("generate the snapshotter bindings");
    println!("cargo:rerun-if-changed=protos");
}
