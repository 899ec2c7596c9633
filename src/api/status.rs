//! The one exhaustive conversion from domain errors to gRPC statuses with rich error details.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::Error;
use crate::domain::error::Conflict;

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "users.v1";

/// Converts a domain error to a status. Internal and availability errors are logged here with the request id,
/// and only a generic message naming that id reaches the client.
pub fn to_status(error: Error, request_id: &str) -> Status {
    let mut details = ErrorDetails::new();
    let info = |details: &mut ErrorDetails, reason: &str, metadata: HashMap<String, String>| {
        details.set_error_info(reason, ERROR_DOMAIN, metadata);
    };
    match error {
        Error::InvalidArgument {
            reason,
            message,
            violations,
        } => {
            for v in &violations {
                details.add_bad_request_violation(v.field.clone(), v.description.clone());
            }
            info(&mut details, reason, HashMap::new());
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        Error::NotFound(message) => {
            info(&mut details, "USER_NOT_FOUND", HashMap::new());
            Status::with_error_details(Code::NotFound, message, details)
        }
        Error::AlreadyExists {
            conflict,
            field,
            message,
        } => {
            let reason = match conflict {
                Conflict::Email => "EMAIL_TAKEN",
                Conflict::Username => "USERNAME_TAKEN",
                Conflict::UserId => "USER_ID_TAKEN",
            };
            info(&mut details, reason, HashMap::from([("field".to_owned(), field)]));
            Status::with_error_details(Code::AlreadyExists, message, details)
        }
        Error::EtagMismatch(message) => {
            info(&mut details, "ETAG_MISMATCH", HashMap::new());
            details.add_precondition_failure_violation("ETAG", "etag", "the etag does not match the stored user");
            Status::with_error_details(Code::Aborted, message, details)
        }
        Error::FailedPrecondition {
            reason,
            subject,
            message,
        } => {
            info(&mut details, reason, HashMap::new());
            details.add_precondition_failure_violation("STATE", subject, message.clone());
            Status::with_error_details(Code::FailedPrecondition, message, details)
        }
        Error::PermissionDenied {
            reason,
            message,
            fields,
        } => {
            info(
                &mut details,
                reason,
                HashMap::from([("fields".to_owned(), fields.join(","))]),
            );
            for f in fields {
                details.add_bad_request_violation(f, "the caller may not write this field");
            }
            Status::with_error_details(Code::PermissionDenied, message, details)
        }
        Error::ResourceExhausted {
            reason,
            message,
            retry_after,
        } => {
            info(&mut details, reason, HashMap::new());
            details.set_retry_info(Some(retry_after));
            Status::with_error_details(Code::ResourceExhausted, message, details)
        }
        Error::Unavailable(internal) => {
            tracing::warn!(request_id, error = %internal, "database unavailable");
            info(&mut details, "DATABASE_UNAVAILABLE", HashMap::new());
            Status::with_error_details(
                Code::Unavailable,
                format!(
                    "the database is unavailable (unreachable, or out of space); retry later (request id {request_id})"
                ),
                details,
            )
        }
        Error::Internal(internal) => {
            tracing::error!(request_id, error = %internal, "internal error");
            Status::internal(format!("internal error (request id {request_id})"))
        }
    }
}
