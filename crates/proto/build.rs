//! Compiles `proto/omnifold/v1/*.proto` with protox (no system `protoc`), then
//! generates prost messages, tonic services, pbjson (proto3 JSON) impls and a
//! file descriptor set for server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files: Vec<PathBuf> = ["common", "internal", "event", "profile", "loyalty", "admin", "audience"]
        .iter()
        .map(|f| root.join(format!("omnifold/v1/{f}.proto")))
        .collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_bytes = fds.encode_to_vec();
    fs::write(out.join("omnifold_descriptor.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .btree_map(".")
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(fds)?;

    pbjson_build::Builder::new().register_descriptors(&descriptor_bytes)?.btree_map(["."]).build(&[".omnifold"])?;
    Ok(())
}
