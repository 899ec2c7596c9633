//! Compiles the protos with protox (no system `protoc`), embeds the encoded descriptor sets (the service's, and
//! Google's error model for reflection) and generates, from the service's set, the tonic server and client code
//! and, per service, the table of handlers through which REST calls reach the service trait
//! (`<service>_handlers`, see src/rest_dispatch.rs).

use std::fmt::Write;
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

    // Google's error model (`google.rpc.Status` and the detail messages), served by reflection only, so that
    // grpcurl and buf curl can decode the details of an error. No code is generated from it: tonic-types has
    // the types.
    let mut rpc = protox::Compiler::new(["proto"])?;
    rpc.include_imports(true)
        .open_files(["google/rpc/status.proto", "google/rpc/error_details.proto"])?;
    fs::write(
        out_dir.join("google_rpc_descriptor.bin"),
        rpc.encode_file_descriptor_set(),
    )?;

    let tonic = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::api::codec::LimitedCodec")
        .service_generator();
    // Type names let the codec find each message's descriptor, to check its repeated fields before decoding.
    let mut config = tonic_prost_build::Config::new();
    config
        .enable_type_names()
        .out_dir(&out_dir)
        .service_generator(Box::new(WithRestHandlers(tonic)));
    config.compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// Generates what tonic does, then the service's REST handler table beside it, in the package's module.
struct WithRestHandlers(Box<dyn prost_build::ServiceGenerator>);

impl prost_build::ServiceGenerator for WithRestHandlers {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        let handlers = rest_handlers(&service);
        self.0.generate(service, buf);
        buf.push_str(&handlers);
    }

    fn finalize(&mut self, buf: &mut String) {
        self.0.finalize(buf);
    }

    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        self.0.finalize_package(package, buf);
    }
}

/// `<service>_handlers(service, limits)`: one handler per unary or server-streaming method, keyed by its full
/// name. Client-streaming methods have none; a REST rule on one fails at start.
fn rest_handlers(service: &prost_build::Service) -> String {
    let module = format!("{}_server", snake(&service.name));
    let full_service = if service.package.is_empty() {
        service.proto_name.clone()
    } else {
        format!("{}.{}", service.package, service.proto_name)
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n/// The unary and server-streaming methods of `{full_service}` as handlers of encoded requests, by full method name: the REST \
         transcoder calls the service through these."
    );
    let _ = writeln!(
        out,
        "pub fn {}_handlers<T: {module}::{}>(service: ::std::sync::Arc<T>, limits: crate::rest_dispatch::MessageLimits) \
         -> ::std::vec::Vec<(&'static str, crate::transcode::Handler)> {{",
        snake(&service.name),
        service.name
    );
    let _ = writeln!(out, "    ::std::vec![");
    for method in &service.methods {
        if method.client_streaming {
            continue;
        }
        // A server-streaming method's handler also names its stream type, which the trait declares.
        let (dispatch, stream) = if method.server_streaming {
            ("server_streaming", format!("T::{}Stream, ", method.proto_name))
        } else {
            ("unary", String::new())
        };
        let _ = writeln!(
            out,
            "        (\"{full_service}.{proto}\", crate::rest_dispatch::{dispatch}::<{input}, {output}, {stream}T, _, _>(\
             service.clone(), limits, |service, request| async move {{ \
             <T as {module}::{trait_name}>::{name}(&service, request).await }})),",
            proto = method.proto_name,
            input = method.input_type,
            output = method.output_type,
            trait_name = service.name,
            name = method.name,
        );
    }
    let _ = writeln!(out, "    ]\n}}");
    out
}

/// `UserService` → `user_service`, as tonic names the server module.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
