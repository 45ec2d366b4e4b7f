//! The claim loop.
//!
//! Up to `slots` attempts run at once. When a slot is free the agent looks
//! for a claimable task ([`crate::finder`]: its home shard first, then
//! where the step's counters say there is work, pending tasks first and
//! expired leases after). When nothing is claimable it polls with
//! jittered, growing waits, and with an idle timeout it exits once nothing
//! has been claimable and nothing has run for that long, and no task of the
//! step is running anywhere (a worker that dies leaves a task that still
//! needs reclaiming) or waiting out a retry delay (a pending task whose
//! ready time is still to come is work to wait for).
//!
//! Errors that no retry will fix (no table, no step, no credentials, access
//! denied) end the agent at once with exit code 3; a store that keeps
//! failing past the error budget ends it with exit code 4; a host that
//! cannot prepare an attempt (disk, permissions) ends it with exit code 5.
//! In every case the tasks it holds are released first.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use taskfleet::model::{StepMeta, Task, TaskState};
use taskfleet::store::{StoreError, TaskStore};
use taskfleet::time::Timestamp;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::config::AgentConfig;
use crate::finder::Finder;
use crate::runner::{AttemptEnd, run_attempt};
use crate::shutdown::Shutdown;
use crate::stats::Stats;

/// The first wait after losing claims to other workers (jittered; it
/// doubles while the losses go on, up to the longest poll).
const CONTENDED_WAIT: Duration = Duration::from_millis(200);

/// Why the agent stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Nothing was claimable for the idle timeout.
    Idle,
    /// A stop was asked for.
    Stopped,
}

/// Why the agent gave up.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Something no retry will fix: no table, no step, no credentials.
    #[error("{0}")]
    Fatal(StoreError),
    /// The store kept failing.
    #[error("the task store kept failing ({attempts} times in a row), last: {last}")]
    StoreFailing {
        /// Consecutive failures.
        attempts: u32,
        /// The last one.
        last: StoreError,
    },
    /// This host cannot prepare attempts; its tasks were released.
    #[error(
        "this host cannot prepare an attempt ({0}); its tasks were released for other workers: fix the disk or directory, or replace the host"
    )]
    Host(String),
}

impl AgentError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Fatal(_) => 3,
            AgentError::StoreFailing { .. } => 4,
            AgentError::Host(_) => 5,
        }
    }
}

/// Store errors no retry fixes ([`StoreError::is_fatal`]).
pub(crate) fn is_fatal(e: &StoreError) -> bool {
    e.is_fatal()
}

/// Runs the agent until it is idle, stopped, or fails.
pub async fn run<S>(
    store: Arc<S>,
    cfg: AgentConfig,
    shutdown: Shutdown,
    stats: Arc<Stats>,
) -> Result<Exit, AgentError>
where
    S: TaskStore + Send + Sync + 'static,
{
    let span = tracing::info_span!("agent", step = %cfg.step, worker = %cfg.owner);
    tracing::Instrument::instrument(claim_loop(store, cfg, shutdown, stats), span).await
}

async fn claim_loop<S>(
    store: Arc<S>,
    cfg: AgentConfig,
    shutdown: Shutdown,
    stats: Arc<Stats>,
) -> Result<Exit, AgentError>
where
    S: TaskStore + Send + Sync + 'static,
{
    let meta = Arc::new(load_step(&*store, &cfg.step).await?);
    crate::cleanup::sweep(&cfg);
    let cfg = Arc::new(cfg);
    // The first attempt that must end the agent says why.
    let trouble: Arc<std::sync::Mutex<Option<AgentError>>> = Arc::default();
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(cfg.slots.max(1)));
    let mut finder = Finder::new(&cfg.owner, cfg.spread, meta.shards);
    // Whether the step's first load is known to be over (it happens once,
    // when a load creates the step).
    let mut loaded = meta.first_load.is_none();
    let mut idle_since = Instant::now();
    let mut waits = Waits::new(&cfg);
    let mut errors = 0u32;
    tracing::info!(step = %cfg.step, owner = %cfg.owner, slots = cfg.slots, launch_index = ?cfg.spread, "agent started");

    let outcome = loop {
        // Wait for a free slot, unless a stop comes first.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shutdown.stopping() => break Ok(Exit::Stopped),
        };
        match finder.claim_next(&*store, &meta, &cfg.owner, &stats).await {
            Ok(Some(task)) => {
                errors = 0;
                waits = Waits::new(&cfg);
                spawn_attempt(
                    &tracker,
                    (&store, &meta, &cfg, &shutdown, &stats, &trouble),
                    task,
                    permit,
                );
                idle_since = Instant::now();
            }
            Ok(None) => {
                drop(permit);
                errors = 0;
                // Others took what this agent tried: there is work, and a
                // moment's wait, longer each time in a row, lets them through.
                let contended = finder.contended();
                if contended || slots.available_permits() < cfg.slots.max(1) {
                    idle_since = Instant::now();
                }
                let finished = finder.open() == Some(0) && meta.after.is_empty();
                let mut wait = waits.next(contended, finished);
                if let Some(limit) = cfg.idle_timeout {
                    let idle = idle_since.elapsed();
                    if idle >= limit {
                        // A task running elsewhere may still need
                        // reclaiming if its worker dies, and a pending task
                        // may be waiting out its retry delay: stay while
                        // there is either.
                        match outstanding(&*store, &meta, &finder, &stats, &mut loaded).await {
                            Ok(0) => break Ok(Exit::Idle),
                            Ok(outstanding) => {
                                tracing::debug!(
                                    outstanding,
                                    "idle, but tasks of the step are running elsewhere or waiting to be retried"
                                );
                                idle_since = Instant::now();
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot count running tasks"),
                        }
                    }
                    wait = wait.min(limit.saturating_sub(idle));
                }
                // Wake early when a slot frees up: a finished task may have
                // made dependants claimable, and a stop must not wait.
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.stopping() => break Ok(Exit::Stopped),
                }
            }
            Err(e) if is_fatal(&e) => {
                drop(permit);
                break Err(AgentError::Fatal(e));
            }
            Err(e) => {
                drop(permit);
                errors += 1;
                tracing::warn!(error = %e, errors, "store request failed");
                if errors >= cfg.store_error_budget {
                    break Err(AgentError::StoreFailing {
                        attempts: errors,
                        last: e,
                    });
                }
                tokio::select! {
                    () = tokio::time::sleep(jitter(waits.poll.max(Duration::from_secs(1)))) => {}
                    () = shutdown.stopping() => break Ok(Exit::Stopped),
                }
                waits.poll = (waits.poll * 2).min(waits.max);
            }
        }
    };
    if outcome.is_err() {
        // Release what we hold before reporting the error.
        shutdown.now();
    }
    tracker.close();
    tracker.wait().await;
    let trouble = trouble
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let outcome = match (outcome, trouble) {
        (Ok(_), Some(error)) => Err(error),
        (outcome, _) => outcome,
    };
    tracing::info!(outcome = ?outcome, "agent stopped");
    outcome
}

/// The step this agent works for; a missing step is fatal.
async fn load_step<S: TaskStore>(store: &S, step: &str) -> Result<StepMeta, AgentError> {
    match store.step(step).await {
        Ok(Some(meta)) => Ok(meta),
        Ok(None) => Err(AgentError::Fatal(StoreError::StepNotFound {
            step: step.to_owned(),
            table: store.describe(),
        })),
        Err(e) if is_fatal(&e) => Err(AgentError::Fatal(e)),
        Err(e) => Err(AgentError::StoreFailing {
            attempts: 1,
            last: e,
        }),
    }
}

/// Runs one claimed task on the tracker; the slot frees when it ends.
#[allow(clippy::type_complexity)]
fn spawn_attempt<S>(
    tracker: &TaskTracker,
    (store, meta, cfg, shutdown, stats, trouble): (
        &Arc<S>,
        &Arc<StepMeta>,
        &Arc<AgentConfig>,
        &Shutdown,
        &Arc<Stats>,
        &Arc<std::sync::Mutex<Option<AgentError>>>,
    ),
    task: Task,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: TaskStore + Send + Sync + 'static,
{
    let (store, meta, cfg, shutdown, stats, trouble) = (
        store.clone(),
        meta.clone(),
        cfg.clone(),
        shutdown.clone(),
        stats.clone(),
        trouble.clone(),
    );
    tracker.spawn(async move {
        match run_attempt(&*store, &meta, &cfg, &shutdown, &stats, task).await {
            AttemptEnd::StoreFailed(e) => {
                tracing::error!(error = %e, "could not record the end of a task; its lease will expire and it will be run again");
            }
            AttemptEnd::HostTrouble(why) => {
                // Claim nothing more here; let running tasks finish.
                trouble
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_or_insert(AgentError::Host(why));
                shutdown.stop();
            }
            AttemptEnd::StoreGone(e) => {
                // Nothing else can be recorded either: stop now.
                trouble
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_or_insert(AgentError::Fatal(e));
                shutdown.now();
            }
            _ => {}
        }
        drop(permit);
    });
}

/// Tasks of the step running anywhere, or pending (claimable now or once
/// their retry delay is over): what the finder last read, else one read.
/// Whether tasks of the step wait for upstream steps that still have work
/// (waiting, pending or running): they become pending as it is done. A
/// counter read per step.
async fn upstream_open<S: TaskStore>(
    store: &S,
    meta: &StepMeta,
    stats: &Stats,
) -> Result<bool, StoreError> {
    Stats::bump(&stats.other_reads);
    if store.unfinished(&meta.step).await?.waiting == 0 {
        return Ok(false);
    }
    for up in &meta.after {
        Stats::bump(&stats.other_reads);
        let left = store.unfinished(up).await?;
        if left.waiting + left.open > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn outstanding<S: TaskStore>(
    store: &S,
    meta: &StepMeta,
    finder: &Finder,
    stats: &Stats,
    first_load_ended: &mut bool,
) -> Result<u64, StoreError> {
    let counted = if let Some(open) = finder.open() {
        open
    } else {
        Stats::bump(&stats.other_reads);
        store.open_per_shard(meta).await?.iter().sum()
    };
    if counted > 0 {
        return Ok(counted);
    }
    if !meta.after.is_empty() && upstream_open(store, meta, stats).await? {
        return Ok(1);
    }
    // Counters are changed with the transitions they count, except behind
    // a step's first load, which counts its writes after they land: one
    // killed before it counted them all leaves its lock on the step, and
    // the counters may trail the tasks until the next load recounts. Only
    // then must the index itself be asked, once per shard, before the
    // fleet goes home with work left. A step's first load happens once,
    // when a load creates it; an agent that outlives its step (a
    // `delete-step`, then a load that creates it again and dies before
    // counting) does not see the new lock and may leave, while the agents
    // launched for the new step read it.
    if *first_load_ended {
        return Ok(0);
    }
    Stats::bump(&stats.other_reads);
    match store.step(&meta.step).await? {
        Some(now) if now.first_load.is_some() => {}
        _ => {
            *first_load_ended = true;
            return Ok(0);
        }
    }
    tracing::debug!("a first load of the step did not finish: asking the index");
    Stats::bump(&stats.other_reads);
    if !store.running(meta).await?.is_empty() {
        return Ok(1);
    }
    for shard in 0..meta.shards {
        Stats::bump(&stats.candidate_queries);
        let pending = store
            .candidates(
                meta,
                shard,
                TaskState::Pending,
                Timestamp::from_millis(i64::MAX),
                1,
                taskfleet::store::Order::OldestFirst,
            )
            .await?;
        if !pending.is_empty() {
            return Ok(1);
        }
    }
    Ok(0)
}

/// The claim loop's waits: polls that grow while nothing is claimable,
/// and the shorter waits after lost claims, growing while the losses go on;
/// both back to their start after a claim.
struct Waits {
    poll: Duration,
    contended: Duration,
    max: Duration,
}

impl Waits {
    fn new(cfg: &AgentConfig) -> Self {
        Self {
            poll: cfg.poll_min,
            contended: CONTENDED_WAIT,
            max: cfg.poll_max,
        }
    }

    /// The next wait (jittered), after a call that lost its claims
    /// (`contended`) or found nothing; grows the one it used. After a call
    /// that found the step `finished` (nothing open, nothing upstream: only
    /// an operator's load or retry brings work now), the longest poll, not
    /// jittered, so that with an idle timeout no longer than it the agent
    /// reads the counters once more at the timeout and leaves: shorter
    /// polls were most of what a finished fleet spent before leaving.
    fn next(&mut self, contended: bool, finished: bool) -> Duration {
        if finished && !contended {
            return self.max;
        }
        let (used, most) = if contended {
            (&mut self.contended, self.max.max(CONTENDED_WAIT))
        } else {
            (&mut self.poll, self.max)
        };
        let wait = jitter(*used);
        *used = (*used * 2).min(most);
        wait
    }
}

/// `d` scaled by a random factor in [0.5, 1.0]: agents that went idle
/// together do not poll together.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..=1.0))
}
