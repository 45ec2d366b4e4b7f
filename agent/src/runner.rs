//! One attempt of one task: the script under `bash` in its own process
//! group, its output streamed to a log file (never held in memory), its
//! lease renewed every third of the step's lease, and one fenced write at
//! the end.
//!
//! If a heartbeat is refused, or the lease runs out because the store could
//! not be reached, the task is no longer ours: the process group is killed
//! and nothing more is written for it.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use taskfleet::model::{AttemptRecord, FailureClass, StepMeta, Task, TaskState};
use taskfleet::store::{Fence, Finish, StoreError, TaskStore};
use taskfleet::time::Timestamp;
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use crate::config::AgentConfig;
use crate::process::{kill_group, signal_group};
use crate::script::{append_note, log_path, read_tail, spawn};
use crate::shutdown::Shutdown;
use crate::stats::Stats;

/// Longest wait before a failed task is retried.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);

/// How an attempt ended, from the agent's point of view.
#[derive(Debug)]
pub enum AttemptEnd {
    /// The final write went through; the task is now in this state.
    Finished(TaskState),
    /// The task was released to `pending` (stop requested).
    Released,
    /// The task was taken away; nothing was written.
    Lost,
    /// The final write could not be made; the lease will expire and the
    /// task will be reclaimed.
    StoreFailed(StoreError),
}

/// Why the script stopped.
enum Ended {
    Exited(ExitStatus),
    TimedOut(ExitStatus),
    Interrupted,
    LeaseLost,
    LaunchFailed(String),
}

/// Runs one claimed task to its end.
pub async fn run_attempt<S: TaskStore>(
    store: &S,
    meta: &StepMeta,
    cfg: &AgentConfig,
    shutdown: &Shutdown,
    counters: &Stats,
    task: Task,
) -> AttemptEnd {
    let span = tracing::info_span!(
        "task",
        step = %task.step,
        task_id = %task.task_id,
        attempt = task.attempt,
        owner = %cfg.owner
    );
    async move {
        let started = Timestamp::now();
        let log_path = log_path(cfg, &task);
        tracing::info!(log = %log_path.display(), "task started");
        let ended = execute(store, meta, cfg, shutdown, counters, &task, &log_path).await;
        let end = conclude(store, meta, cfg, counters, &task, ended, started, &log_path).await;
        tracing::info!(end = ?end, "task ended");
        end
    }
    .instrument(span)
    .await
}

/// Runs the script and keeps the lease until the script ends or must be
/// stopped.
async fn execute<S: TaskStore>(
    store: &S,
    meta: &StepMeta,
    cfg: &AgentConfig,
    shutdown: &Shutdown,
    counters: &Stats,
    task: &Task,
    log_path: &Path,
) -> Ended {
    let (mut child, pgid) = match spawn(cfg, task, log_path) {
        Ok(spawned) => spawned,
        Err(e) => return Ended::LaunchFailed(e.to_string()),
    };
    let period = meta.settings.lease / 3;
    let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lease_until = task.lease_expires_at.unwrap_or_else(Timestamp::now);
    let timeout_at = meta.settings.timeout.map(|t| Instant::now() + t);
    let mut grace_until: Option<Instant> = None;
    let far = Instant::now() + Duration::from_secs(100 * 365 * 86_400);

    let ended = loop {
        tokio::select! {
            // The script ended by itself (wait is cancel-safe).
            exit = child.wait() => {
                break match exit {
                    Ok(exit) => Ended::Exited(exit),
                    Err(e) => Ended::LaunchFailed(format!("cannot wait for the script: {e}")),
                };
            }
            // Keep the lease. A refused renewal means the task was taken
            // away; a lease that ran out unrenewed may have been.
            _ = heartbeat.tick() => {
                let until = Timestamp::now().plus(meta.settings.lease);
                Stats::bump(&counters.heartbeats);
                match store.heartbeat(meta, task, until).await {
                    Ok(Fence::Held) => lease_until = until,
                    Ok(Fence::Lost) => {
                        tracing::warn!("lease taken away; killing the script");
                        let _ = kill_group(&mut child, pgid, cfg.kill_grace).await;
                        break Ended::LeaseLost;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "heartbeat failed");
                        if Timestamp::now().plus(period / 2) >= lease_until {
                            tracing::warn!("lease ran out without renewal; killing the script");
                            let _ = kill_group(&mut child, pgid, cfg.kill_grace).await;
                            break Ended::LeaseLost;
                        }
                    }
                }
            }
            // The step's time limit.
            () = sleep_until(timeout_at.unwrap_or(far)), if timeout_at.is_some() => {
                tracing::warn!("timeout reached; killing the script");
                match kill_group(&mut child, pgid, cfg.kill_grace).await {
                    Ok(status) => break Ended::TimedOut(status),
                    Err(e) => break Ended::LaunchFailed(format!("cannot kill the script: {e}")),
                }
            }
            // A stop was asked for: the grace period starts.
            () = shutdown.stopping(), if grace_until.is_none() => {
                tracing::info!(grace = ?cfg.grace, "stop requested; task may finish within the grace period");
                grace_until = Some(Instant::now() + cfg.grace);
            }
            // Grace period over, or a second signal: release the task.
            () = sleep_until(grace_until.unwrap_or(far)), if grace_until.is_some() => {
                let _ = kill_group(&mut child, pgid, cfg.kill_grace).await;
                break Ended::Interrupted;
            }
            () = shutdown.immediate() => {
                let _ = kill_group(&mut child, pgid, cfg.kill_grace).await;
                break Ended::Interrupted;
            }
        }
    };
    // Whatever the script left running in its group goes with it.
    signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
    ended
}

/// Turns how the script ended into the task's next state, and writes it.
#[allow(clippy::too_many_arguments)]
async fn conclude<S: TaskStore>(
    store: &S,
    meta: &StepMeta,
    cfg: &AgentConfig,
    counters: &Stats,
    task: &Task,
    ended: Ended,
    started: Timestamp,
    log_path: &Path,
) -> AttemptEnd {
    let now = Timestamp::now();
    let (exit_code, signal, class) = match &ended {
        Ended::LeaseLost => return AttemptEnd::Lost,
        Ended::Exited(status) if status.success() => (Some(0), None, None),
        Ended::Exited(status) => (
            status.code(),
            status.signal(),
            Some(if status.code().is_some() {
                FailureClass::Exit
            } else {
                FailureClass::Signal
            }),
        ),
        Ended::TimedOut(status) => (status.code(), status.signal(), Some(FailureClass::Timeout)),
        Ended::Interrupted => (None, None, Some(FailureClass::Interrupted)),
        Ended::LaunchFailed(why) => {
            tracing::error!(error = %why, "could not run the script");
            append_note(log_path, why);
            (None, None, Some(FailureClass::Launch))
        }
    };
    let counts_as_failure = !matches!(class, None | Some(FailureClass::Interrupted));
    let next = match class {
        None => TaskState::Done,
        Some(FailureClass::Interrupted) => TaskState::Pending,
        Some(_) if task.failed_attempts + 1 >= meta.settings.max_attempts => TaskState::Failed,
        Some(_) => TaskState::Pending,
    };
    let ready_at = if counts_as_failure {
        let factor = 1u32 << task.failed_attempts.min(16);
        now.plus(cfg.retry_delay.saturating_mul(factor).min(MAX_RETRY_DELAY))
    } else {
        now
    };
    let finish = Finish {
        next,
        counts_as_failure,
        ready_at,
        record: AttemptRecord {
            attempt: task.attempt,
            owner: cfg.owner.clone(),
            started_at: started,
            finished_at: now,
            outcome: next,
            exit_code,
            signal,
            failure_class: class,
            log_uri: Some(format!("file://{}", log_path.display())),
            provenance: Some(format!(
                "agent {} on {}; script sha256:{}",
                env!("CARGO_PKG_VERSION"),
                cfg.owner,
                task.script_digest
            )),
        },
        output_tail: Some(read_tail(log_path, cfg.tail_bytes)),
    };
    let mut tries = 0;
    loop {
        tries += 1;
        Stats::bump(&counters.finishes);
        match store.finish(meta, task, &finish).await {
            Ok(Fence::Held) if class == Some(FailureClass::Interrupted) => {
                return AttemptEnd::Released;
            }
            Ok(Fence::Held) => return AttemptEnd::Finished(next),
            Ok(Fence::Lost) => {
                tracing::warn!("task was taken over before it finished; result discarded");
                return AttemptEnd::Lost;
            }
            Err(e) if tries >= cfg.store_error_budget => return AttemptEnd::StoreFailed(e),
            Err(e) => {
                tracing::warn!(error = %e, tries, "final write failed; retrying");
                tokio::time::sleep(Duration::from_millis(200) * tries).await;
            }
        }
    }
}
