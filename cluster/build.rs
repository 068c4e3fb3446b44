//! Compiles etcd's v3 API (proto/, copied from etcd: proto/README.md) with
//! protox: no system `protoc` needed. Clients only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["etcd/api/etcdserverpb/rpc.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
