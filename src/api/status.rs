//! The one mapping from engine errors to gRPC statuses.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

/// The retry delay a RESOURCE_EXHAUSTED status suggests (`google.rpc.RetryInfo`): long enough for
/// the queued writes ahead to drain, short enough not to idle a loader.
pub const RETRY_DELAY: Duration = Duration::from_millis(200);

/// `status` again with `google.rpc` details: `RetryInfo` when it is RESOURCE_EXHAUSTED, and an
/// `ErrorInfo` in the `segmentd` domain with `reason` and `metadata` (what was applied before a
/// stream stopped, say), so a client reads them instead of parsing the message.
pub fn with_details(status: Status, reason: &str, metadata: Vec<(&str, String)>) -> Status {
    let mut details = details_of(status.code()).unwrap_or_default();
    details.set_error_info(
        reason,
        "segmentd",
        metadata
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<std::collections::HashMap<_, _>>(),
    );
    Status::with_error_details(status.code(), status.message(), details)
}

/// The details every status of `code` carries, if any: `RetryInfo` for RESOURCE_EXHAUSTED.
fn details_of(code: Code) -> Option<ErrorDetails> {
    (code == Code::ResourceExhausted).then(|| ErrorDetails::with_retry_info(Some(RETRY_DELAY)))
}

impl From<Error> for Status {
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
        match details_of(code) {
            Some(details) => Status::with_error_details(code, e.to_string(), details),
            None => Status::new(code, e.to_string()),
        }
    }
}
