//! Compiles `proto/picket/v1/*.proto` with protox: no system `protoc` needed.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/picket/v1/picket.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("picket_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Channels are made by picket-tls; no `connect(url)` helpers, so
        // this crate needs none of tonic's transport.
        .build_transport(false)
        // Small maps (labels, event fields): a BTreeMap is cheaper to build
        // and hash-free, and prints in a stable order.
        .btree_map(".")
        // Encoded records, sliced out of the received message, not copied.
        .bytes(".picket.v1.RecordBatch.records")
        .compile_fds(fds)?;
    Ok(())
}
