//! Generates the gRPC types of `proto/lift.proto` with the pure-Rust `protox` compiler, so a
//! build needs no `protoc` on the machine.

use std::path::PathBuf;

#[allow(clippy::disallowed_methods)] // what Cargo tells a build script
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest_dir.join("../proto");
    let proto_file = proto_dir.join("lift.proto");
    println!("cargo:rerun-if-changed={}", proto_file.display());

    let mut compiler = protox::Compiler::new([&proto_dir])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_file("lift.proto")?;

    // The encoded set feeds tonic-reflection, so grpcurl can list and call the service.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("lift_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
