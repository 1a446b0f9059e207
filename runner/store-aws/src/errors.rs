//! AWS errors → the store's errors. The decision is a pure function of the
//! error code, the HTTP status and how the call failed, so it is tested
//! here without a service (moto never throttles or answers 5xx).

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use gantry_store::Error;

/// How a call failed, as far as the classification needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure<'a> {
    /// The service answered an error: its code and HTTP status.
    Service { code: Option<&'a str>, status: u16 },
    /// No answer in time: the request may have been applied.
    Timeout,
    /// The request could not be sent, or its answer not read.
    Transport { sent: bool },
    /// The request could not be built: a bug or bad input.
    Construction,
}

/// Codes AWS answers when it is overloaded: try again later.
const THROTTLED: [&str; 6] = [
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "Throttling",
    "RequestThrottled",
    "TransactionInProgressException",
];

/// The store error for `failure` of `what` (the operation, for the
/// message). Conditional failures are mapped by the caller, which knows
/// the key.
pub(crate) fn classify(what: &str, failure: Failure<'_>, message: &str) -> Error {
    match failure {
        Failure::Service { code, status } => {
            let code_text = code.unwrap_or("unknown");
            if code.is_some_and(|c| THROTTLED.contains(&c)) || status >= 500 || status == 429 {
                return Error::Unavailable {
                    message: format!("{what}: {code_text} ({status}): {message}"),
                    maybe_applied: status >= 500,
                };
            }
            if code == Some("ValidationException") && message.contains("size") {
                return Error::Invalid(format!("{what}: too large: {message}"));
            }
            if code.is_some_and(|c| c.contains("NotFound") || c.contains("NonExistent")) {
                return Error::Unavailable {
                    message: format!(
                        "{what}: {code_text}: {message} (does the table or queue exist? `gantry backend init` creates them)"
                    ),
                    maybe_applied: false,
                };
            }
            Error::Invalid(format!("{what}: {code_text} ({status}): {message}"))
        }
        Failure::Timeout => Error::Unavailable {
            message: format!("{what}: timed out"),
            maybe_applied: true,
        },
        Failure::Transport { sent } => Error::Unavailable {
            message: format!("{what}: {message}"),
            maybe_applied: sent,
        },
        Failure::Construction => Error::Invalid(format!("{what}: {message}")),
    }
}

/// How `error` failed.
pub(crate) fn failure_of<E: ProvideErrorMetadata>(
    error: &SdkError<E, HttpResponse>,
) -> Failure<'_> {
    match error {
        SdkError::ServiceError(context) => Failure::Service {
            code: context.err().code(),
            status: context.raw().status().as_u16(),
        },
        SdkError::TimeoutError(_) => Failure::Timeout,
        SdkError::DispatchFailure(_) => Failure::Transport { sent: false },
        SdkError::ResponseError(_) => Failure::Transport { sent: true },
        _ => Failure::Construction,
    }
}

/// The store error for an SDK error of `what`.
pub(crate) fn from_sdk<E>(what: &str, error: &SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = match error {
        SdkError::ServiceError(context) => context.err().message().unwrap_or_default().to_string(),
        other => aws_sdk_dynamodb::error::DisplayErrorContext(other).to_string(),
    };
    classify(what, failure_of(error), &message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str, status: u16) -> Error {
        classify(
            "op",
            Failure::Service {
                code: Some(code),
                status,
            },
            "m",
        )
    }

    #[test]
    fn throttling_and_server_errors_are_retryable() {
        for code in [
            "ThrottlingException",
            "ProvisionedThroughputExceededException",
            "RequestLimitExceeded",
        ] {
            let e = service(code, 400);
            assert!(e.is_retryable(), "{code}: {e}");
            assert!(
                matches!(
                    e,
                    Error::Unavailable {
                        maybe_applied: false,
                        ..
                    }
                ),
                "{e}"
            );
        }
        let e = service("InternalServerError", 500);
        assert!(
            matches!(
                e,
                Error::Unavailable {
                    maybe_applied: true,
                    ..
                }
            ),
            "{e}"
        );
        assert!(service("SlowDown", 503).is_retryable());
    }

    #[test]
    fn timeouts_may_have_applied_and_bad_requests_are_final() {
        let e = classify("op", Failure::Timeout, "");
        assert!(
            matches!(
                e,
                Error::Unavailable {
                    maybe_applied: true,
                    ..
                }
            ),
            "{e}"
        );
        let e = classify("op", Failure::Transport { sent: false }, "refused");
        assert!(
            matches!(
                e,
                Error::Unavailable {
                    maybe_applied: false,
                    ..
                }
            ),
            "{e}"
        );
        assert!(!service("ValidationException", 400).is_retryable());
        assert!(matches!(
            service("ValidationException", 400),
            Error::Invalid(_)
        ));
        let missing = service("ResourceNotFoundException", 400);
        assert!(
            missing.to_string().contains("gantry backend init"),
            "{missing}"
        );
    }
}
