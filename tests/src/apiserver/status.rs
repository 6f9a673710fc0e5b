//! Errors as the API server sends them: a `Status` with its code, reason
//! and message, and details naming the object.

use super::kind::Kind;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusDetails};

/// The error of every request handler and store call: the `Status` to
/// answer with (boxed, a `Status` being large).
pub(super) type Failure = Box<Status>;

/// A `Status` as the API server sends it.
pub(super) fn status(code: u16, reason: &str, message: impl Into<String>) -> Failure {
    Box::new(Status {
        code: Some(i32::from(code)),
        message: Some(message.into()),
        reason: Some(reason.to_string()),
        status: Some("Failure".to_string()),
        ..Status::default()
    })
}

pub(super) fn with_details(mut s: Failure, kind: Kind, name: &str) -> Failure {
    s.details = Some(StatusDetails {
        name: Some(name.to_string()),
        group: Some(kind.group().to_string()).filter(|g| !g.is_empty()),
        kind: Some(kind.plural().to_string()),
        ..StatusDetails::default()
    });
    s
}

pub(super) fn not_found(kind: Kind, name: &str) -> Failure {
    let message = format!("{} \"{name}\" not found", kind.resource());
    with_details(status(404, "NotFound", message), kind, name)
}

pub(super) fn bad_request(message: impl Into<String>) -> Failure {
    status(400, "BadRequest", message)
}

pub(super) fn invalid(kind: Kind, name: &str, cause: &str) -> Failure {
    let message = format!("{} \"{name}\" is invalid: {cause}", kind.name());
    with_details(status(422, "Invalid", message), kind, name)
}

/// A 410 for a resourceVersion older than the event log.
pub(super) fn expired(message: impl Into<String>) -> Failure {
    status(410, "Expired", message)
}

/// A Status as an error for the Rust API.
pub(super) fn status_error(s: Failure) -> anyhow::Error {
    anyhow::anyhow!(
        "{} ({}): {}",
        s.code.unwrap_or_default(),
        s.reason.unwrap_or_default(),
        s.message.unwrap_or_default()
    )
}
