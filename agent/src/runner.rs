//! One attempt of one task: the script under `bash` in its own process
//! group, its output streamed to a log file (never held in memory), its
//! lease renewed every third of the step's lease (or sooner:
//! [`crate::lease`]), and one fenced write at the end.
//!
//! - A refused renewal means the task was taken away: the process group is
//!   killed and nothing more is written for it. One refused because an
//!   operator cancelled the task (`taskctl cancel`) kills it too, and the
//!   attempt ends `cancelled` without using an attempt; so does an end
//!   write other than `done` that meets the cancel. An ask withdrawn
//!   meanwhile (the escalated task that asked it was retried and took its
//!   run back) refuses that end, and the attempt is given back instead.
//! - A renewal that fails or hangs does not hold anything up: it runs
//!   beside the script with a deadline, and if the lease was not renewed
//!   by the kill point of [`crate::lease::Lease`], the script is killed so
//!   that it is dead before the lease expires.
//! - A script killed by a signal while the agent is stopping is
//!   `interrupted`: released without using an attempt.
//! - An attempt this host cannot prepare (no disk, no permission) is the
//!   host's trouble, not the task's: released without using an attempt,
//!   and the agent stops.
//! - The final write is repeated, renewing the lease meanwhile, until the
//!   store takes it or the lease is truly gone: a result is never dropped
//!   while the task is still ours.

use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use taskfleet::model::{AttemptRecord, FailureClass, StepMeta, Task, TaskState};
use taskfleet::store::{Fence, Finish, StoreError, TaskStore};
use taskfleet::time::Timestamp;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::Instrument;

use crate::config::AgentConfig;
use crate::lease::Lease;
use crate::log_upload;
use crate::outcome;
use crate::process::{kill_group, signal_group};
use crate::script::{append_note, log_path, read_tail, spawn};
use crate::shutdown::Shutdown;
use crate::stats::Stats;

/// How long the last upload of a lost attempt's log may take.
const LOST_UPLOAD_DEADLINE: Duration = Duration::from_secs(60);

/// The longest the last upload of an ended attempt's log may hold up its
/// final write.
const LAST_UPLOAD_MAX: Duration = Duration::from_secs(300);

/// The same while the agent stops.
const STOPPING_UPLOAD_MAX: Duration = Duration::from_secs(10);

/// How long a script killed by a signal waits for the agent's own stop
/// to arrive: a supervisor that stops a host signals every process at
/// once, and the script may see it first.
const STOP_SETTLE: Duration = Duration::from_millis(500);

/// How an attempt ended, from the agent's point of view.
#[derive(Debug)]
pub enum AttemptEnd {
    /// The final write went through; the task is now in this state.
    Finished(TaskState),
    /// The task was released to `pending` (stop requested, or given back
    /// after a cancel that was withdrawn).
    Released,
    /// This host could not prepare the attempt; the task was released
    /// (if the store took the release) and the agent must stop.
    HostTrouble(String),
    /// The task was taken away, or its lease ran out; nothing was written.
    Lost,
    /// The final write could not be made before the lease ran out; the
    /// task will be reclaimed.
    StoreFailed(StoreError),
    /// The store answered with an error no retry fixes (the table was
    /// deleted, access was revoked): the script was killed, nothing could
    /// be written, and the agent must stop.
    StoreGone(StoreError),
}

/// Why the script stopped.
enum Ended {
    Exited(ExitStatus),
    TimedOut(ExitStatus),
    Interrupted,
    /// Interrupted because EC2 is taking the spot instance back.
    Reclaimed,
    LeaseLost,
    /// An operator cancelled the task; the script was killed.
    Cancelled,
    LaunchFailed(String),
    HostTrouble(String),
    /// A renewal got an error no retry fixes.
    StoreGone(StoreError),
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
        let mut task = task;
        let remote = cfg.upload.as_ref().map(|u| {
            let (key, uri) = log_upload::target(u, &task);
            // Renewals record where the running attempt's log goes, so a
            // reclaim names it in the lost attempt's record.
            task.log_uri = Some(uri.clone());
            Remote {
                upload: u,
                key,
                uri,
                uploaded: AtomicBool::new(false),
            }
        });
        let run = execute(store, meta, cfg, shutdown, counters, &task, &log_path);
        let (mut ended, mut lease) = match &remote {
            Some(r) => {
                let uploads = log_upload::periodically(r.upload, &r.key, &log_path, &r.uploaded);
                tokio::select! {
                    // The script's end ends the periodic uploads.
                    out = run => out,
                    // Uploads go on until then.
                    () = uploads => unreachable!("periodic uploads never end by themselves"),
                }
            }
            None => run.await,
        };
        if matches!(ended, Ended::Interrupted) && shutdown.is_spot() {
            ended = Ended::Reclaimed;
        }
        // A stopping agent (a spot notice, a supervisor's stop) has little
        // time left for the last upload.
        let log = (log_path.as_path(), remote.as_ref(), shutdown.is_stopping());
        let end = conclude(
            (store, meta, cfg, counters),
            &task,
            ended,
            started,
            log,
            &mut lease,
        )
        .await;
        tracing::info!(end = ?end, "task ended");
        end
    }
    .instrument(span)
    .await
}

/// Where an attempt's log is uploaded.
struct Remote<'a> {
    upload: &'a crate::config::LogUpload,
    key: String,
    uri: String,
    /// Whether an upload of the running attempt's log made it.
    uploaded: AtomicBool,
}

/// The longest the last upload of a log may take: half of what the final
/// write has left, so that the end is still written in time, at most
/// [`LAST_UPLOAD_MAX`], and [`STOPPING_UPLOAD_MAX`] when the agent is
/// stopping (a spot notice leaves two minutes for everything).
fn upload_deadline(lease: &Lease, stopping: bool) -> Duration {
    let cap = if stopping {
        STOPPING_UPLOAD_MAX
    } else {
        LAST_UPLOAD_MAX
    };
    (lease.write_deadline() / 2).min(cap)
}

/// A renewal in flight: the store's answer (or its deadline passing), and
/// the expiry it asked for.
type Renewal<'a> = Pin<
    Box<
        dyn Future<
                Output = (
                    Result<Result<Fence, StoreError>, tokio::time::error::Elapsed>,
                    Instant,
                ),
            > + Send
            + 'a,
    >,
>;

/// Signals that mean "stop", as a supervisor or the kernel sends them to
/// every process when a host goes down.
fn is_stop_signal(signal: i32) -> bool {
    [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGKILL,
    ]
    .iter()
    .any(|s| *s as i32 == signal)
}

/// Runs the script and keeps the lease until the script ends or must be
/// stopped. Returns how it ended and the lease as it stands.
async fn execute<S: TaskStore>(
    store: &S,
    meta: &StepMeta,
    cfg: &AgentConfig,
    shutdown: &Shutdown,
    counters: &Stats,
    task: &Task,
    log_path: &Path,
) -> (Ended, Lease) {
    let mut lease = Lease::new(
        meta.settings.lease,
        task.lease_expires_at.unwrap_or_else(Timestamp::now),
        cfg.kill_grace,
    );
    if lease.is_over(Instant::now()) {
        // The claim itself took so long that the lease is nearly gone.
        tracing::warn!("the claim came back too late to run the script; leaving the task");
        return (Ended::LeaseLost, lease);
    }
    let (mut child, pgid) = match spawn(cfg, task, log_path) {
        Ok(spawned) => spawned,
        Err(e) => return (Ended::HostTrouble(e.to_string()), lease),
    };
    let timeout_at = meta.settings.timeout.map(|t| Instant::now() + t);
    let mut grace_until: Option<Instant> = None;
    let far = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    let mut renewal: Option<Renewal<'_>> = None;

    let ended = loop {
        tokio::select! {
            // The script ended by itself (wait is cancel-safe).
            exit = child.wait() => {
                let exit = match exit {
                    Ok(exit) => exit,
                    Err(e) => break Ended::LaunchFailed(format!("cannot wait for the script: {e}")),
                };
                let Some(signal) = exit.signal().filter(|s| is_stop_signal(*s)) else {
                    break Ended::Exited(exit);
                };
                if !shutdown.is_stopping() {
                    tokio::select! {
                        () = shutdown.stopping() => {}
                        () = sleep(STOP_SETTLE) => {}
                    }
                }
                break if shutdown.is_stopping() {
                    tracing::info!(signal, "script stopped by a signal while the agent stops");
                    Ended::Interrupted
                } else {
                    Ended::Exited(exit)
                };
            }
            // A renewal is due: it runs beside the script, with a deadline
            // that ends before the kill point.
            () = sleep_until(lease.renew_at()), if renewal.is_none() => {
                let (until, expires) = lease.next();
                let deadline = lease.call_deadline();
                Stats::bump(&counters.heartbeats);
                renewal = Some(Box::pin(async move {
                    (timeout(deadline, store.heartbeat(meta, task, until)).await, expires)
                }));
            }
            // The renewal came back, or its deadline passed.
            (answer, expires) = async { renewal.as_mut().expect("guarded").await }, if renewal.is_some() => {
                renewal = None;
                if let Some(ended) = renewal_answered(answer, expires, &mut lease) {
                    let _ = kill_group(&mut child, pgid, cfg.kill_grace.min(lease.kill_grace())).await;
                    break ended;
                }
            }
            // The lease was not renewed in time: the script must be dead
            // before it expires, whatever the store is doing.
            () = sleep_until(lease.kill_at()) => {
                tracing::warn!("lease not renewed in time; killing the script before it expires");
                let _ = kill_group(&mut child, pgid, lease.kill_grace()).await;
                break Ended::LeaseLost;
            }
            // The step's time limit.
            () = sleep_until(timeout_at.unwrap_or(far)), if timeout_at.is_some() => {
                tracing::warn!("timeout reached; killing the script");
                match kill_group(&mut child, pgid, cfg.kill_grace.min(lease.kill_grace())).await {
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
                let _ = kill_group(&mut child, pgid, cfg.kill_grace.min(lease.kill_grace())).await;
                break Ended::Interrupted;
            }
            () = shutdown.immediate() => {
                let _ = kill_group(&mut child, pgid, cfg.kill_grace.min(lease.kill_grace())).await;
                break Ended::Interrupted;
            }
        }
    };
    // A renewal still in flight is dropped: the final write is fenced.
    drop(renewal);
    // Whatever the script left running in its group goes with it.
    signal_group(pgid, Signal::SIGKILL);
    (ended, lease)
}

/// What a renewal's answer means for the attempt: it goes on (`None`), or
/// its script must be killed, for the reason returned.
fn renewal_answered(
    answer: Result<Result<Fence, StoreError>, tokio::time::error::Elapsed>,
    expires: Instant,
    lease: &mut Lease,
) -> Option<Ended> {
    match answer {
        Ok(Ok(Fence::Held)) => lease.renewed(expires),
        Ok(Ok(Fence::Lost)) => {
            tracing::warn!("lease taken away; killing the script");
            return Some(Ended::LeaseLost);
        }
        Ok(Ok(Fence::Cancelled)) => {
            tracing::warn!("task cancelled by an operator; killing the script");
            return Some(Ended::Cancelled);
        }
        // Nothing this attempt does can be recorded, now or later: stop it
        // and the agent.
        Ok(Err(e)) if crate::worker::is_fatal(&e) => {
            tracing::error!(error = %e, "lease renewal failed for good; killing the script");
            return Some(Ended::StoreGone(e));
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "lease renewal failed");
            lease.renewal_failed();
        }
        Err(_) => {
            tracing::warn!("lease renewal got no answer in time");
            lease.renewal_failed();
        }
    }
    None
}

/// Turns how the script ended into the task's next state, and writes it.
async fn conclude<S: TaskStore>(
    (store, meta, cfg, counters): (&S, &StepMeta, &AgentConfig, &Stats),
    task: &Task,
    ended: Ended,
    started: Timestamp,
    (log_path, remote, stopping): (&Path, Option<&Remote<'_>>, bool),
    lease: &mut Lease,
) -> AttemptEnd {
    let ended = match ended {
        Ended::StoreGone(e) => return AttemptEnd::StoreGone(e),
        Ended::LeaseLost => {
            // The attempt is over for us; its log still goes up whole.
            if let Some(r) = remote {
                log_upload::last(r.upload, &r.key, log_path, LOST_UPLOAD_DEADLINE).await;
            }
            return AttemptEnd::Lost;
        }
        other => other,
    };
    let now = Timestamp::now();
    let (exit_code, signal, class) = match &ended {
        Ended::LeaseLost | Ended::StoreGone(_) => unreachable!("handled above"),
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
        Ended::Reclaimed => (None, None, Some(FailureClass::Spot)),
        Ended::Cancelled => (None, None, Some(FailureClass::Cancelled)),
        Ended::LaunchFailed(why) => {
            tracing::error!(error = %why, "could not run the script");
            append_note(log_path, why);
            (None, None, Some(FailureClass::Launch))
        }
        Ended::HostTrouble(why) => {
            tracing::error!(error = %why, "this host cannot prepare an attempt; releasing the task");
            (None, None, Some(FailureClass::Host))
        }
    };
    let (next, counts_as_failure, ready_at, escalate_to) = if matches!(ended, Ended::Cancelled) {
        (TaskState::Cancelled, false, now, None)
    } else {
        outcome::next_state(task, meta, cfg, (class, exit_code, signal), now)
    };
    let (log_uri, output_tail) = match &ended {
        // The log may be what could not be written.
        Ended::HostTrouble(why) => (None, Some(format!("agent: {why}"))),
        _ => (
            Some(keep_log(log_path, remote, upload_deadline(lease, stopping)).await),
            meta.settings
                .output_tail
                .then(|| read_tail(log_path, cfg.tail_bytes)),
        ),
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
            log_uri,
            provenance: Some(provenance(cfg, task)),
        },
        output_tail,
        escalate_to,
        expires_at: (next == TaskState::Done)
            .then(|| meta.settings.expiry_of(now))
            .flatten(),
    };
    let (written, how) = write_outcome(
        (store, meta, counters),
        task,
        finish,
        matches!(ended, Ended::Cancelled),
        lease,
    )
    .await;
    match written {
        Ok(Fence::Held) => match ended {
            // The host's trouble stops the agent, cancelled or not.
            Ended::HostTrouble(why) => AttemptEnd::HostTrouble(why),
            _ if how == Written::Cancelled => AttemptEnd::Finished(TaskState::Cancelled),
            _ if how == Written::GivenBack => AttemptEnd::Released,
            Ended::Interrupted | Ended::Reclaimed => AttemptEnd::Released,
            _ => AttemptEnd::Finished(next),
        },
        Ok(Fence::Lost | Fence::Cancelled) => {
            tracing::warn!("task was taken over before it finished; result discarded");
            AttemptEnd::Lost
        }
        Err(e) => match ended {
            Ended::HostTrouble(why) => AttemptEnd::HostTrouble(why),
            _ => AttemptEnd::StoreFailed(e),
        },
    }
}

/// Which end [`write_outcome`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// The one asked for: as the script ended.
    AsAsked,
    /// Cancelled: the script was stopped for a cancel, or the end met one.
    Cancelled,
    /// Given back: the script was stopped for a cancel that was then
    /// withdrawn.
    GivenBack,
}

/// Writes `finish`; the end as cancelled instead when it meets a cancel;
/// and when that is refused while the task is still ours (the ask was
/// withdrawn: the task that escalated here was retried and took its run
/// back), the end as the script left it, or, if the script was stopped for
/// the ask (`cancelled`), the task given back.
async fn write_outcome<S: TaskStore>(
    (store, meta, counters): (&S, &StepMeta, &Stats),
    task: &Task,
    finish: Finish,
    cancelled: bool,
    lease: &mut Lease,
) -> (Result<Fence, StoreError>, Written) {
    let ctx = (store, meta, counters);
    let written = write_end(ctx, task, &finish, lease).await;
    if !cancelled {
        if !matches!(written, Ok(Fence::Cancelled)) {
            return (written, Written::AsAsked);
        }
        // Cancelled after the last renewal: the attempt ends as asked.
        tracing::warn!("task cancelled by an operator as it ended; recording it cancelled");
        let written = write_end(ctx, task, &outcome::cancelled(finish.clone()), lease).await;
        if !matches!(written, Ok(Fence::Lost)) {
            return (written, Written::Cancelled);
        }
        // Withdrawn meanwhile, or lost: the end as the script left it
        // (refused too if lost).
        return (write_end(ctx, task, &finish, lease).await, Written::AsAsked);
    }
    if !matches!(written, Ok(Fence::Lost)) {
        return (written, Written::Cancelled);
    }
    tracing::warn!("end as cancelled refused; giving the task back if it is still ours");
    let written = write_end(ctx, task, &outcome::given_back(finish.clone()), lease).await;
    if matches!(written, Ok(Fence::Cancelled)) {
        // Asked again since: cancelled after all.
        return (
            write_end(ctx, task, &finish, lease).await,
            Written::Cancelled,
        );
    }
    (written, Written::GivenBack)
}

/// Which agent, on which host, ran which script: an attempt's provenance.
fn provenance(cfg: &AgentConfig, task: &Task) -> String {
    format!(
        "agent {} on {}; script sha256:{}",
        env!("CARGO_PKG_VERSION"),
        cfg.host.as_deref().unwrap_or(&cfg.owner),
        task.script_digest
    )
}

/// Where an ended attempt's log is kept: uploaded once more within
/// `deadline` when it goes to S3, and named there if that or an earlier
/// upload made it (the host, and its file, may be gone soon); else the
/// file on this host.
async fn keep_log(log_path: &Path, remote: Option<&Remote<'_>>, deadline: Duration) -> String {
    if let Some(r) = remote {
        let last = log_upload::last(r.upload, &r.key, log_path, deadline).await;
        if last || r.uploaded.load(Ordering::Relaxed) {
            return r.uri.clone();
        }
    }
    format!("file://{}", log_path.display())
}

/// The final write, repeated until the store takes it or the lease is
/// truly gone, renewing the lease meanwhile: the task is still ours, and
/// its result must not be dropped because the store was away a while.
async fn write_end<S: TaskStore>(
    (store, meta, counters): (&S, &StepMeta, &Stats),
    task: &Task,
    finish: &Finish,
    lease: &mut Lease,
) -> Result<Fence, StoreError> {
    let mut tries = 0u32;
    loop {
        tries += 1;
        Stats::bump(&counters.finishes);
        let last = match timeout(lease.write_deadline(), store.finish(meta, task, finish)).await {
            Ok(Ok(fence)) => {
                counters.finished_now();
                return Ok(fence);
            }
            Ok(Err(e)) => e,
            Err(_) => StoreError::Unreachable {
                endpoint: store.describe(),
                detail: "no answer before the lease ran out".into(),
            },
        };
        if Instant::now() >= lease.expires() {
            return Err(last);
        }
        tracing::warn!(error = %last, tries, "final write failed; keeping the lease and trying again");
        if Instant::now() >= lease.renew_at() {
            Stats::bump(&counters.heartbeats);
            let (until, expires) = lease.next();
            match timeout(lease.write_deadline(), store.heartbeat(meta, task, until)).await {
                Ok(Ok(Fence::Held)) => lease.renewed(expires),
                Ok(Ok(Fence::Lost)) => return Ok(Fence::Lost),
                // Still ours, but not renewed: the end write itself says
                // whether the cancel stops it (a done or cancelled end is
                // taken).
                Ok(Ok(Fence::Cancelled) | Err(_)) | Err(_) => lease.renewal_failed(),
            }
        }
        let backoff = Duration::from_millis(200).saturating_mul(tries.min(10));
        sleep(backoff.min(lease.write_deadline())).await;
    }
}
