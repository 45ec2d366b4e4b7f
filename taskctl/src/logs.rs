//! `taskctl logs`: an attempt's log, from wherever the task says it is.
//!
//! A finished attempt's record names its log (`s3://...` when its agent
//! uploaded it, `file://...` for a log on the agent's disk); a running
//! attempt's renewals name where its log is being uploaded. The log is
//! streamed to standard output, never held whole; `--follow` prints what
//! was added since, every [`FOLLOW_EVERY`], until the attempt ends.

use std::io::{Seek as _, SeekFrom, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_s3::error::ProvideErrorMetadata;
use taskfleet::logs::{LogSource, source};
use taskfleet::model::{Task, TaskState};
use taskfleet::store::TaskStore;

use crate::cli::{GlobalArgs, LogsArgs};
use crate::connect;

/// Between reads of a followed log.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// Runs `taskctl logs`.
pub async fn logs(global: &GlobalArgs, args: &LogsArgs) -> Result<()> {
    let store = connect::open(global).await?;
    let task = read_task(&store, args).await?;
    let attempt = args.attempt.unwrap_or(task.attempt);
    let uri = log_uri(&task, attempt)?;
    let from = source(&uri).map_err(anyhow::Error::msg)?;
    let s3 = match from {
        LogSource::S3 { .. } => Some(connect::s3(global, args.s3_endpoint_url.as_deref()).await),
        LogSource::File(_) => None,
    };
    let mut out = std::io::stdout().lock();
    let mut offset = 0;
    let mut running = is_running(&task, attempt);
    loop {
        offset += copy_from(&from, s3.as_ref(), offset, running, &mut out).await?;
        out.flush()?;
        if !(args.follow && running) {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
        // One more read after the attempt ends: its last upload.
        running = is_running(&read_task(&store, args).await?, attempt);
    }
}

async fn read_task(store: &taskfleet::store::Store, args: &LogsArgs) -> Result<Task> {
    store.task(&args.step, &args.task).await?.with_context(|| {
        format!(
            "step '{}' has no task '{}'; `taskctl status --step {}` shows what it has",
            args.step, args.task, args.step
        )
    })
}

fn is_running(task: &Task, attempt: u32) -> bool {
    task.state == TaskState::Running && task.attempt == attempt
}

/// Where attempt `attempt` of `task` has its log, or why there is none.
fn log_uri(task: &Task, attempt: u32) -> Result<String> {
    let name = format!("{}/{}", task.step, task.task_id);
    if task.attempt == 0 {
        bail!("{name} has not run yet (it is {})", task.state);
    }
    if attempt == 0 || attempt > task.attempt {
        bail!(
            "{name} has had {} attempt{}; give --attempt 1 to {}",
            task.attempt,
            if task.attempt == 1 { "" } else { "s" },
            task.attempt
        );
    }
    if is_running(task, attempt) {
        return task.log_uri.clone().with_context(|| {
            format!(
                "attempt {attempt} of {name} is running on {} and its log is not in S3 yet: \
                 an agent with --log-bucket names it at its first lease renewal; \
                 otherwise the log is on that worker's disk",
                task.owner.as_deref().unwrap_or("an unknown worker")
            )
        });
    }
    let record = task
        .history
        .iter()
        .rev()
        .find(|r| r.attempt == attempt)
        .with_context(|| format!("attempt {attempt} of {name} left no record"))?;
    record.log_uri.clone().with_context(|| {
        format!(
            "attempt {attempt} of {name} kept no log ({})",
            record.outcome
        )
    })
}

/// Writes the log's bytes from `offset` on; returns how many. A log not
/// there yet while its attempt runs is empty so far.
async fn copy_from(
    from: &LogSource<'_>,
    s3: Option<&aws_sdk_s3::Client>,
    offset: u64,
    running: bool,
    out: &mut impl Write,
) -> Result<u64> {
    match from {
        LogSource::File(path) => {
            let mut file = match std::fs::File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                    "the log {} is not on this machine: it was written by an agent elsewhere without --log-bucket",
                    path.display()
                ),
                Err(e) => bail!("cannot read the log {}: {e}", path.display()),
            };
            file.seek(SeekFrom::Start(offset))?;
            Ok(std::io::copy(&mut file, out)?)
        }
        LogSource::S3 { bucket, key } => {
            let client = s3.expect("an S3 client for an S3 log");
            let mut get = client.get_object().bucket(*bucket).key(*key);
            if offset > 0 {
                get = get.range(format!("bytes={offset}-"));
            }
            let object = match get.send().await {
                Ok(o) => o,
                Err(e) => {
                    let code = e.code().unwrap_or_default().to_owned();
                    return match code.as_str() {
                        // Nothing new since the last read.
                        "InvalidRange" => Ok(0),
                        "NoSuchKey" if running => Ok(0),
                        "NoSuchKey" => bail!(
                            "the log s3://{bucket}/{key} is not in S3 (removed by the bucket's lifecycle rule?)"
                        ),
                        "AccessDenied" => bail!(
                            "no permission to read s3://{bucket}/{key}; use credentials with s3:GetObject on the log prefix (the operator policy grants it)"
                        ),
                        _ => Err(anyhow::anyhow!(
                            "cannot read s3://{bucket}/{key}: {}",
                            taskfleet::logs::failure(&e)
                        )),
                    };
                }
            };
            let mut body = object.body;
            let mut sent = 0u64;
            while let Some(chunk) = body
                .try_next()
                .await
                .with_context(|| format!("reading s3://{bucket}/{key} was cut off"))?
            {
                out.write_all(&chunk)?;
                sent += chunk.len() as u64;
            }
            Ok(sent)
        }
    }
}
