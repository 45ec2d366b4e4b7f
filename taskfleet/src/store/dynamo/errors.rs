//! Turning SDK errors into [`StoreError`]s a person can act on, and telling
//! lost races and requests worth repeating from real failures.

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::CancellationReason;
use aws_smithy_types::error::display::DisplayErrorContext;

use super::DynamoStore;
use crate::store::StoreError;

impl DynamoStore {
    /// The [`StoreError`] for a failed request.
    pub(super) fn classify<E, R>(&self, operation: &'static str, err: &SdkError<E, R>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        if let Some(refused) = crate::iam::not_granted(err) {
            return StoreError::AccessDenied {
                operation,
                message: refused.to_string(),
            };
        }
        let code = err.code().map(str::to_owned);
        let text = DisplayErrorContext(err).to_string();
        let message = err.message().map_or_else(|| text.clone(), str::to_owned);
        match (err, code.as_deref()) {
            (_, Some("ResourceNotFoundException")) => StoreError::TableNotFound {
                table: self.table.clone(),
                endpoint: self.endpoint.clone(),
            },
            (
                _,
                Some(
                    "AccessDeniedException"
                    | "UnrecognizedClientException"
                    | "InvalidSignatureException"
                    | "MissingAuthenticationTokenException"
                    | "ExpiredTokenException",
                ),
            ) => StoreError::AccessDenied { operation, message },
            _ if text.contains("no credentials found") || text.contains("CredentialsNotLoaded") => {
                StoreError::NoCredentials {
                    detail: "environment, profile, web identity, container and instance metadata all came up empty"
                        .to_owned(),
                }
            }
            _ if text.contains("region") && text.contains("missing") => StoreError::NoRegion,
            (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _) => StoreError::Unreachable {
                endpoint: self.endpoint.clone(),
                detail: innermost_cause(err),
            },
            (_, Some(code)) => StoreError::Service {
                operation,
                message: format!("{code}: {message}"),
            },
            _ => StoreError::Service { operation, message: text },
        }
    }
}

/// Whether the request may simply be repeated: throttling, a transient
/// server error, a conflict with another transaction, or a timeout.
pub(super) fn is_retryable<E, R>(err: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    matches!(
        err.code(),
        Some(
            "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "InternalServerError"
                | "ServiceUnavailable"
                | "TransactionConflictException"
                | "TransactionInProgressException"
        )
    ) || matches!(err, SdkError::TimeoutError(_))
}

/// Whether a transaction was refused as a whole for throttling (typed, so
/// that scripted responses without an error code are recognised too).
pub(super) fn is_throttled_transaction<R>(err: &SdkError<TransactWriteItemsError, R>) -> bool {
    is_retryable(err)
        || err.as_service_error().is_some_and(|e| {
            e.is_provisioned_throughput_exceeded_exception()
                || e.is_request_limit_exceeded()
                || e.is_throttling_exception()
                || e.is_internal_server_error()
                || e.is_transaction_in_progress_exception()
        })
}

/// Whether a conditional write failed its condition (a lost race, not an
/// error).
pub(super) fn is_condition_failed<E, R>(err: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    err.code() == Some("ConditionalCheckFailedException")
}

/// The cancellation reasons of a cancelled transaction, one per item in
/// request order; `None` for any other error.
pub(super) fn cancellation_reasons<R>(
    err: &SdkError<TransactWriteItemsError, R>,
) -> Option<&[CancellationReason]> {
    match err.as_service_error()? {
        TransactWriteItemsError::TransactionCanceledException(c) => Some(c.cancellation_reasons()),
        _ => None,
    }
}

/// How a cancelled transaction's item fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// The item was fine; another one cancelled the transaction.
    None,
    /// Its condition failed: a lost race.
    ConditionFailed,
    /// Throttled, or in conflict with another transaction: try again.
    Retry,
    /// Anything else (validation, item size): a real failure.
    Other,
}

/// The kind of one cancellation reason.
pub(super) fn reason_kind(r: &CancellationReason) -> Reason {
    match r.code() {
        None | Some("None") => Reason::None,
        Some("ConditionalCheckFailed") => Reason::ConditionFailed,
        Some(
            "TransactionConflict"
            | "ThrottlingError"
            | "ProvisionedThroughputExceeded"
            | "RequestLimitExceeded",
        ) => Reason::Retry,
        Some(_) => Reason::Other,
    }
}

/// The innermost cause in an SDK error chain: the part a person can act on.
fn innermost_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}
