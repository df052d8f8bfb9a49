//! Generates the gRPC server and client code and the reflection descriptor set from `proto/`.
//!
//! protoc comes from `protoc-bin-vendored`, so a fresh machine needs no system protoc.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("proto");
    let mut files = Vec::new();
    collect_protos(root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");
    if files.is_empty() {
        return Ok(());
    }

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Malformed requests are INVALID_ARGUMENT, not tonic-prost's INTERNAL (src/rpc/codec.rs).
        .codec_path("crate::rpc::codec::Codec")
        .file_descriptor_set_path(out_dir.join("palyra_descriptor.bin"))
        .compile_with_config(config, &files, &[root.to_path_buf(), well_known])?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
