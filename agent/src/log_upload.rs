//! An attempt's log to S3, when the agent is given a bucket
//! (`--log-bucket`): uploaded every [`LogUpload::every`] while the script
//! runs, so that a host that dies loses at most that much of it, and once
//! more when the attempt ends, whatever the outcome, before the end is
//! written (the attempt's record names the object).
//!
//! The object is `s3://BUCKET/PREFIX/STEP/NAME/ATTEMPT.log` (see
//! [`taskfleet::logs`]), a different one for every attempt. Each upload
//! streams the log file as it stands ([`taskfleet::logs::upload`]): memory
//! stays at one part whatever the log's size. A failed upload is logged
//! and tried again at the next period; the log stays on the host either
//! way, and the task's outcome never depends on it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use taskfleet::Task;

use crate::config::LogUpload;
use crate::script::task_file_name;

/// Where this attempt's log goes: its key and `s3://` URI.
pub fn target(upload: &LogUpload, task: &Task) -> (String, String) {
    let key = upload
        .to
        .key(&task.step, &task_file_name(&task.task_id), task.attempt);
    let uri = upload.to.uri(&key);
    (key, uri)
}

/// Uploads the log at `path` at once (so that the object the renewals
/// name exists) and then every `upload.every`, forever: the caller drops
/// this future when the script ends. Sets `uploaded` once an upload made
/// it.
pub async fn periodically(upload: &LogUpload, key: &str, path: &Path, uploaded: &AtomicBool) {
    loop {
        match taskfleet::logs::upload(&upload.client, &upload.to.bucket, key, path).await {
            Ok(_) => uploaded.store(true, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(error = %e, "cannot upload the running attempt's log; trying again later");
            }
        }
        tokio::time::sleep(upload.every).await;
    }
}

/// The last upload of an ended attempt's log, within `deadline`; whether
/// it made it.
pub async fn last(upload: &LogUpload, key: &str, path: &Path, deadline: Duration) -> bool {
    let sent = tokio::time::timeout(
        deadline,
        taskfleet::logs::upload(&upload.client, &upload.to.bucket, key, path),
    )
    .await;
    match sent {
        Ok(Ok(bytes)) => {
            tracing::info!(bytes, key, "attempt log uploaded");
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot upload the attempt's log; it stays on this host");
            false
        }
        Err(_) => {
            tracing::warn!(
                ?deadline,
                "the attempt's log upload did not finish in time; it stays on this host"
            );
            false
        }
    }
}
