//! The Connect protocol (unary calls with protobuf and JSON bodies, its error format, headers and limits) and
//! server reflection in both versions, with Google's error model among the files it serves.

use prost::Message;

use crate::support::{Backend, TestApp};

/// Asks reflection, in one of its two versions, for the services and for the file that defines `symbol`;
/// returns the service names and the names of the files answered (the defining file first).
macro_rules! reflect {
    ($version:ident, $addr:expr, $symbol:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

        let channel = tonic::transport::Channel::from_shared(format!("http://{}", $addr))
            .expect("uri")
            .connect()
            .await
            .expect("reflection client connects");
        let mut client = ServerReflectionClient::new(channel);
        let requests = [
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol($symbol.to_owned()),
        ]
        .map(|request| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        });
        let mut answers = client
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .expect("reflection answers")
            .into_inner();
        let mut services = Vec::new();
        let mut files = Vec::new();
        while let Some(answer) = answers.message().await.expect("a reflection answer") {
            match answer.message_response {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    services.extend(list.service.into_iter().map(|s| s.name));
                }
                Some(MessageResponse::FileDescriptorResponse(found)) => {
                    for bytes in found.file_descriptor_proto {
                        let file = prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("a file");
                        files.push((file.name().to_owned(), file));
                    }
                }
                other => panic!("unexpected reflection answer: {other:?}"),
            }
        }
        (services, files)
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_services_and_serve_the_error_details() {
    let app = TestApp::start(Backend::Sqlite).await;
    let (v1_services, v1_files) = reflect!(v1, app.addr, "google.rpc.BadRequest");
    let (alpha_services, alpha_files) = reflect!(v1alpha, app.addr, "google.rpc.BadRequest");
    for services in [&v1_services, &alpha_services] {
        for expected in [
            "users.v1.UserService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} missing from {services:?}"
            );
        }
    }
    for files in [&v1_files, &alpha_files] {
        let (name, file) = files.first().expect("the defining file");
        assert_eq!(name, "google/rpc/error_details.proto");
        let bad_request = file
            .message_type
            .iter()
            .find(|m| m.name() == "BadRequest")
            .expect("BadRequest is in the file");
        assert!(bad_request.nested_type.iter().any(|m| m.name() == "FieldViolation"));
        assert!(
            file.dependency.iter().any(|d| d == "google/protobuf/duration.proto"),
            "{:?}",
            file.dependency
        );
    }
    // The status message that carries the details, and ErrorInfo, resolve too.
    let (_, files) = reflect!(v1alpha, app.addr, "google.rpc.Status");
    assert_eq!(files.first().map(|(n, _)| n.as_str()), Some("google/rpc/status.proto"));
    let (_, files) = reflect!(v1, app.addr, "google.rpc.ErrorInfo");
    assert_eq!(
        files.first().map(|(n, _)| n.as_str()),
        Some("google/rpc/error_details.proto")
    );
}
