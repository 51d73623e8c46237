//! The one mapping from engine errors to gRPC statuses.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

/// The retry delay a RESOURCE_EXHAUSTED status suggests (`google.rpc.RetryInfo`): long enough for
/// the queued writes ahead to drain, short enough not to idle a loader.
pub const RETRY_DELAY: Duration = Duration::from_millis(200);

/// A status of `code` with `message` and `details`, to which the details every status of `code`
/// carries are added (`RetryInfo` when it is RESOURCE_EXHAUSTED) and an `ErrorInfo` in the
/// `segmentd` domain with `reason` and `metadata` (what was applied before a stream stopped, say),
/// so a client reads them instead of parsing the message.
pub fn with_details(
    code: Code,
    message: impl Into<String>,
    mut details: ErrorDetails,
    reason: &str,
    metadata: Vec<(&str, String)>,
) -> Status {
    if code == Code::ResourceExhausted && details.retry_info().is_none() {
        details.set_retry_info(Some(RETRY_DELAY));
    }
    details.set_error_info(
        reason,
        "segmentd",
        metadata
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<std::collections::HashMap<_, _>>(),
    );
    Status::with_error_details(code, message, details)
}

/// The `ErrorInfo` reason of each kind of error: stable, for programs to branch on.
fn reason(e: &Error) -> &'static str {
    match e {
        Error::InvalidArgument { .. } => "INVALID_FIELD",
        Error::NotFound(_) => "NOT_FOUND",
        Error::AlreadyExists(_) => "ALREADY_EXISTS",
        Error::FailedPrecondition(_) => "FAILED_PRECONDITION",
        Error::OutOfRange(_) => "OUT_OF_RANGE",
        Error::ResourceExhausted(_) => "OVERLOADED",
        Error::Unavailable(_) => "UNAVAILABLE",
        Error::DataLoss(_) => "DATA_LOSS",
        Error::Internal(_) => "INTERNAL",
    }
}

impl From<Error> for Status {
    /// Google's rich error model: every status carries an `ErrorInfo` (domain `segmentd`, a
    /// reason from [`reason`]); INVALID_ARGUMENT a `BadRequest` whose field violation is the
    /// field's path (`customers[3].email`: the row's index in it); RESOURCE_EXHAUSTED a
    /// `RetryInfo`.
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::DataLoss(_) => Code::DataLoss,
            Error::Internal(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        let mut details = ErrorDetails::new();
        if let Error::InvalidArgument { field, message } = &e {
            details.add_bad_request_violation(field.clone(), message.clone());
        }
        with_details(code, e.to_string(), details, reason(&e), Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_carries_its_details() {
        let s = Status::from(Error::invalid("customers[3].email", "not an e-mail"));
        let d = s.get_error_details();
        let v = &d.bad_request().expect("BadRequest").field_violations[0];
        assert_eq!(
            (v.field.as_str(), v.description.as_str()),
            ("customers[3].email", "not an e-mail")
        );
        assert_eq!(
            d.error_info().map(|i| (i.reason.as_str(), i.domain.as_str())),
            Some(("INVALID_FIELD", "segmentd"))
        );
        let s = Status::from(Error::ResourceExhausted("busy".into()));
        let d = s.get_error_details();
        assert!(d.retry_info().is_some_and(|r| r.retry_delay == Some(RETRY_DELAY)));
        assert_eq!(d.error_info().map(|i| i.reason.as_str()), Some("OVERLOADED"));
        let d = Status::from(Error::NotFound("segment `x` not found".into())).get_error_details();
        assert_eq!(d.error_info().map(|i| i.reason.as_str()), Some("NOT_FOUND"));
        assert!(d.bad_request().is_none());
    }
}
