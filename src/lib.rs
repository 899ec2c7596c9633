//! user-service: user management over gRPC, gRPC-Web and REST/JSON, with field-mask partial updates.
//! `app` builds the whole service as one router; `serve` runs it on a listener until shutdown.

pub mod api;
pub mod auth;
pub mod config;
pub mod connection;
pub mod decode_limits;
pub mod domain;
pub mod gate;
pub mod hash_pool;
pub mod limits;
pub mod mail;
pub mod metrics;
pub mod rest_dispatch;
pub mod rpc_status;
pub mod server;
pub mod store;
pub mod token_cache;
pub mod transcode;
pub mod typed_json;

pub use server::{App, app, serve};

/// The generated protobuf types, tonic stubs and REST handler tables of `users.v1`, and the descriptor set they
/// came from.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
    tonic::include_proto!("users.v1");

    /// The encoded `FileDescriptorSet` of the protos, with the `google.api.http` and `field_behavior` options
    /// kept; reflection serves it.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/user_service_descriptor.bin"));

    /// The encoded `FileDescriptorSet` of `google/rpc/status.proto` and `google/rpc/error_details.proto` with
    /// their imports: reflection serves it so that clients decode the error details without proto files.
    pub const GOOGLE_RPC_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/google_rpc_descriptor.bin"));
}
