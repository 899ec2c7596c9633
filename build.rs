//! Compiles the protos with protox (no system `protoc`), embeds the encoded descriptor set and generates the
//! tonic server and client code from that same set.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    // embed_migrations! reads the migration folders at compile time, but a new folder is no change rustc sees.
    println!("cargo:rerun-if-changed=migrations");

    // The PostgreSQL variants of the integration tests need a test database: without TEST_DATABASE_URL they
    // are compiled as ignored, so the runner reports them as not run instead of as passed.
    println!("cargo:rustc-check-cfg=cfg(test_database)");
    println!("cargo:rerun-if-env-changed=TEST_DATABASE_URL");
    if env::var_os("TEST_DATABASE_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo:rustc-cfg=test_database");
    }

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_file("users/v1/user_service.proto")?;

    // The encoded set keeps the `google.api.http` and `field_behavior` options, which a re-encode through
    // prost_types would drop; reflection, the transcoder and the OpenAPI document all read these bytes.
    fs::write(
        out_dir.join("user_service_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // Type names let the codec find each message's descriptor, to check its repeated fields before decoding.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::api::codec::LimitedCodec")
        .compile_fds_with_config(compiler.file_descriptor_set(), config)?;
    Ok(())
}
