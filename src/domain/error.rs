//! The one closed error type of the domain; each variant documents the gRPC code it becomes.

use std::fmt;

/// One bad field: its path relative to the request (`user.email`, `user.labels[bad key]`, `update_mask`) and a
/// sentence saying what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        FieldViolation {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Why a unique value could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    Email,
    Username,
    UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// INVALID_ARGUMENT with a `BadRequest` listing every violation; `reason` goes to `ErrorInfo`.
    #[error("{message}")]
    InvalidArgument {
        reason: &'static str,
        message: String,
        violations: Vec<FieldViolation>,
    },
    /// NOT_FOUND: no user with that id (or email/username for a lookup).
    #[error("{0}")]
    NotFound(String),
    /// ALREADY_EXISTS with reason `EMAIL_TAKEN`, `USERNAME_TAKEN` or `USER_ID_TAKEN`.
    #[error("{message}")]
    AlreadyExists {
        conflict: Conflict,
        field: String,
        message: String,
    },
    /// ABORTED: the etag a caller sent is not the stored one (AIP-154); reason `ETAG_MISMATCH`.
    #[error("{0}")]
    EtagMismatch(String),
    /// FAILED_PRECONDITION with a `PreconditionFailure`: the user's state does not allow the call.
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        subject: String,
        message: String,
    },
    /// PERMISSION_DENIED; `fields` names each field the caller may not write.
    #[error("{message}")]
    PermissionDenied {
        reason: &'static str,
        message: String,
        fields: Vec<String>,
    },
    /// RESOURCE_EXHAUSTED with `RetryInfo`: the caller must wait before trying again; `reason` goes to
    /// `ErrorInfo` (`TOO_MANY_ATTEMPTS`, `RATE_LIMITED`, `TOO_MANY_CONFLICTS`).
    #[error("{message}")]
    ResourceExhausted {
        reason: &'static str,
        message: String,
        retry_after: std::time::Duration,
    },
    /// UNAVAILABLE: the database cannot be reached; the text is for the log only.
    #[error("database unavailable")]
    Unavailable(String),
    /// INTERNAL: a bug or an unexpected storage failure; the text is for the log only.
    #[error("internal error")]
    Internal(String),
}

impl Error {
    /// INVALID_ARGUMENT for a set of violations, or `Ok` when there are none.
    pub fn check(violations: Vec<FieldViolation>) -> Result<(), Error> {
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(violations))
        }
    }

    /// INVALID_ARGUMENT for request field violations.
    pub fn invalid(violations: Vec<FieldViolation>) -> Error {
        let message = summarize(&violations);
        Error::InvalidArgument {
            reason: "INVALID_FIELDS",
            message,
            violations,
        }
    }

    /// INVALID_ARGUMENT for one field.
    pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Error {
        Error::invalid(vec![FieldViolation::new(field, description)])
    }

    /// Joins the INVALID_ARGUMENT errors of several batch items into one listing every violation.
    pub fn combine_invalid(errors: Vec<Error>) -> Option<Error> {
        if errors.is_empty() {
            return None;
        }
        let violations = errors
            .into_iter()
            .flat_map(|e| match e {
                Error::InvalidArgument { violations, .. } => violations,
                other => vec![FieldViolation::new("", other.to_string())],
            })
            .collect();
        Some(Error::invalid(violations))
    }

    /// ALREADY_EXISTS for a unique value another user holds, naming its field in a write request.
    pub fn taken(conflict: Conflict) -> Error {
        let (field, message) = match conflict {
            Conflict::Email => ("user.email", "the e-mail address is already used by another user"),
            Conflict::Username => ("user.username", "the username is already used by another user"),
            Conflict::UserId => ("user_id", "a user with this id already exists"),
        };
        Error::AlreadyExists {
            conflict,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn not_found(id: impl fmt::Display) -> Error {
        Error::NotFound(format!("user {id} not found"))
    }

    pub fn internal(e: impl fmt::Display) -> Error {
        Error::Internal(e.to_string())
    }

    /// [`Error::with_field_prefix`] when `prefix` is not empty.
    pub fn with_field_prefix_if(self, prefix: &str) -> Error {
        if prefix.is_empty() {
            self
        } else {
            self.with_field_prefix(prefix)
        }
    }

    /// Prefixes every field path (violations, conflicts) with `prefix`, for errors of a batch item.
    pub fn with_field_prefix(self, prefix: &str) -> Error {
        match self {
            Error::InvalidArgument {
                reason,
                message,
                violations,
            } => {
                let violations: Vec<FieldViolation> = violations
                    .into_iter()
                    .map(|v| FieldViolation::new(format!("{prefix}.{}", v.field), v.description))
                    .collect();
                Error::InvalidArgument {
                    reason,
                    message: format!("{prefix}: {message}"),
                    violations,
                }
            }
            Error::AlreadyExists {
                conflict,
                field,
                message,
            } => Error::AlreadyExists {
                conflict,
                field: format!("{prefix}.{field}"),
                message: format!("{prefix}: {message}"),
            },
            Error::NotFound(m) => Error::NotFound(format!("{prefix}: {m}")),
            Error::EtagMismatch(m) => Error::EtagMismatch(format!("{prefix}: {m}")),
            Error::FailedPrecondition {
                reason,
                subject,
                message,
            } => Error::FailedPrecondition {
                reason,
                subject,
                message: format!("{prefix}: {message}"),
            },
            Error::PermissionDenied {
                reason,
                message,
                fields,
            } => Error::PermissionDenied {
                reason,
                message: format!("{prefix}: {message}"),
                fields: fields.into_iter().map(|f| format!("{prefix}.{f}")).collect(),
            },
            other => other,
        }
    }
}

fn summarize(violations: &[FieldViolation]) -> String {
    match violations {
        [] => "invalid request".to_owned(),
        [one] => format!("{}: {}", one.field, one.description),
        [first, rest @ ..] => format!(
            "{}: {} (and {} more violation{})",
            first.field,
            first.description,
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        ),
    }
}
