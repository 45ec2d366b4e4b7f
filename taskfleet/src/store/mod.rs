//! The stores that hold tasks, and the errors they report.
//!
//! A store keeps the task contract; callers see the outcomes of conditional
//! writes as values, and only real failures (a missing table, no
//! credentials, an unreachable service) as [`StoreError`].

pub mod any;
pub mod dynamo;
mod error;
mod settings;
pub mod sqlite;
mod values;

pub use any::Store;
pub use error::StoreError;
pub use settings::SettingsChange;
pub use values::{
    Candidate, Claim, Correction, Fence, InsertOutcome, Order, ReplaceOutcome, RunningTask,
    StepChange, Unfinished,
};

use std::collections::BTreeMap;
use std::future::Future;

use crate::model::{
    FailedTask, LoadLock, LoadRecord, NewTask, StepMeta, StepStatus, Task, TaskPage, TaskState,
    TaskSummary,
};
use crate::time::Timestamp;

/// Where a page of [`TaskStore::in_state`] ended: the index time and
/// id of its last task.
pub type PruneCursor = (Timestamp, String);

fn no_prune() -> StoreError {
    StoreError::Service {
        operation: "prune",
        message: "this store cannot prune tasks".into(),
    }
}

/// A step that still holds tasks when its remains are to be removed.
fn prune_not_empty(step: &str, left: u64) -> StoreError {
    StoreError::Service {
        operation: "deleting a step",
        message: format!(
            "step '{step}' still counts {left} task(s) (loaded or changed while it was being deleted, or a counter that drifted: `taskctl recount --step {step}`); run delete-step again"
        ),
    }
}

fn no_first_load() -> StoreError {
    StoreError::Service {
        operation: "first load",
        message: "this store never holds a first-load lock".into(),
    }
}

pub use crate::transition::{
    CLOCK_SKEW_MARGIN, Finish, HISTORY_KEEP, lost_record, reclaim_cutoff, trim_history,
};

/// Operations every store offers for loading and reporting.
///
/// Methods return `impl Future + Send` so that callers can run them on a
/// multi-threaded runtime.
pub trait TaskStore: Sync {
    /// A short description of where the tasks live, for messages.
    fn describe(&self) -> String;

    /// Creates the step or applies `change` to it.
    fn ensure_step(
        &self,
        step: &str,
        change: &SettingsChange,
    ) -> impl Future<Output = Result<(StepMeta, StepChange), StoreError>> + Send;

    /// [`TaskStore::ensure_step`] for a load. A store whose conditional
    /// inserts cost much more than plain writes (DynamoDB) creates a new
    /// step with `lock` held ([`StepMeta::first_load`]), so that its first
    /// load may write with [`TaskStore::put_first`]; a step whose first
    /// load runs is waited for, and one whose first load died is recounted
    /// and freed. Other stores never lock.
    fn ensure_step_for_load(
        &self,
        step: &str,
        change: &SettingsChange,
        lock: &LoadLock,
    ) -> impl Future<Output = Result<(StepMeta, StepChange), StoreError>> + Send {
        let _ = lock;
        self.ensure_step(step, change)
    }

    /// Writes `tasks` (one shard; new tasks of a step whose first-load
    /// `lock` this load holds, each written once) without per-task
    /// conditions. Returns how many were written and are not counted yet;
    /// [`TaskStore::count_first`] counts them.
    fn put_first(
        &self,
        meta: &StepMeta,
        lock: &LoadLock,
        tasks: &[Task],
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let _ = (meta, lock, tasks);
        async { Err(no_first_load()) }
    }

    /// Adds counter deltas per shard for tasks [`TaskStore::put_first`]
    /// wrote, and renews `lock` until `renewed`; fails with
    /// [`StoreError::LoadLockLost`] if the lock is no longer this load's.
    fn count_first(
        &self,
        meta: &StepMeta,
        lock: &LoadLock,
        renewed: Timestamp,
        counts: &[(u16, Vec<(&'static str, i64)>)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (meta, lock, renewed, counts);
        async { Err(no_first_load()) }
    }

    /// Frees the step of this load's first-load `lock`.
    fn end_first_load(
        &self,
        meta: &StepMeta,
        lock: &LoadLock,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (meta, lock);
        async { Err(no_first_load()) }
    }

    /// Writes those of `tasks` that do not exist yet and counts them as
    /// loaded, in the same atomic write per batch; existing tasks are
    /// returned untouched. All tasks must be in the same shard of `meta`.
    fn insert(
        &self,
        meta: &StepMeta,
        tasks: &[Task],
    ) -> impl Future<Output = Result<InsertOutcome, StoreError>> + Send;

    /// [`TaskStore::insert`] for a step loaded after the steps `after`
    /// (`load --after`): each new task starts as its upstream tasks say
    /// (pending, waiting or failed) and is linked to them, in one atomic
    /// write with them, so that whoever ends an upstream task moves it on.
    fn insert_after(
        &self,
        meta: &StepMeta,
        tasks: &[Task],
        after: &[String],
    ) -> impl Future<Output = Result<InsertOutcome, StoreError>> + Send {
        let _ = (meta, tasks, after);
        async {
            Err(StoreError::Service {
                operation: "load --after",
                message: "this store does not keep dependencies between steps".into(),
            })
        }
    }

    /// Up to `limit` tasks of one shard of a step in `state` whose index
    /// time is before `before` (for `done`: that finished before it),
    /// oldest first, after `after` (where the last page ended), whole:
    /// from the state index, never the table. The cursor of the next page
    /// comes with them (`None`: the shard has no more).
    fn in_state(
        &self,
        meta: &StepMeta,
        shard: u16,
        state: TaskState,
        before: Timestamp,
        after: Option<&PruneCursor>,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<Task>, Option<PruneCursor>), StoreError>> + Send {
        let _ = (meta, shard, state, before, after, limit);
        async { Err(no_prune()) }
    }

    /// Removes `tasks` (of `meta`, as read), each only while it is still as
    /// read ([`crate::transition::prune`]), and takes them off the counts
    /// in the same writes. Returns how many were removed.
    fn prune(
        &self,
        meta: &StepMeta,
        tasks: &[Task],
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let _ = (meta, tasks);
        async { Err(no_prune()) }
    }

    /// Every step, in name order (one request on DynamoDB).
    fn steps(&self) -> impl Future<Output = Result<Vec<StepMeta>, StoreError>> + Send;

    /// Removes what is left of a step whose tasks are gone (`taskctl
    /// delete-step`): its counters, load records, and the step itself,
    /// last. Refused, with nothing removed, while any task of it is
    /// counted (one loaded meanwhile, say).
    fn remove_step(&self, meta: &StepMeta) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Gives `old` (as read; never `running`) the script and row of `new`
    /// with a fresh attempt budget, provided it is still that attempt in
    /// that state. Its attempt number and history stay.
    fn replace(
        &self,
        meta: &StepMeta,
        old: &Task,
        new: &Task,
    ) -> impl Future<Output = Result<ReplaceOutcome, StoreError>> + Send;

    /// Puts task `task_id`, failed at `attempt`, back to pending with a
    /// fresh attempt budget (`taskctl retry`), recording `by`; a task that
    /// is no longer that failed attempt is left alone
    /// ([`ReplaceOutcome::Changed`]).
    fn retry(
        &self,
        meta: &StepMeta,
        task_id: &str,
        attempt: u32,
        by: &str,
    ) -> impl Future<Output = Result<ReplaceOutcome, StoreError>> + Send;

    /// Cancels `task` (as read; pending, waiting or running) for `by`
    /// ([`crate::transition::cancel`]), with what waits for it; a task
    /// that changed since it was read, or has nothing to cancel, is left
    /// alone ([`ReplaceOutcome::Changed`]).
    fn cancel(
        &self,
        meta: &StepMeta,
        task: &Task,
        by: &str,
    ) -> impl Future<Output = Result<ReplaceOutcome, StoreError>> + Send;

    /// Recomputes the counters of a step from its tasks (through the state
    /// index, never the whole table) and returns what was wrong; corrects
    /// it when `apply`.
    fn recount(
        &self,
        meta: &StepMeta,
        apply: bool,
    ) -> impl Future<Output = Result<Vec<Correction>, StoreError>> + Send;

    /// Counts per step; every step when `step` is `None`.
    fn status(
        &self,
        step: Option<&str>,
    ) -> impl Future<Output = Result<Vec<StepStatus>, StoreError>> + Send;

    /// The most recently failed tasks, newest first.
    fn failed(
        &self,
        step: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<FailedTask>, StoreError>> + Send;

    /// One task's whole record.
    fn task(
        &self,
        step: &str,
        task_id: &str,
    ) -> impl Future<Output = Result<Option<Task>, StoreError>> + Send;

    /// The stored step, if any.
    fn step(&self, step: &str)
    -> impl Future<Output = Result<Option<StepMeta>, StoreError>> + Send;

    /// Task `task_id` in every step where it exists, in step order: its
    /// keys are known, so the cost is the step list and a batch read (on
    /// DynamoDB one Query and one BatchGetItem per 100 steps), whatever
    /// the number of tasks.
    fn find(
        &self,
        task_id: &str,
    ) -> impl Future<Output = Result<Vec<TaskSummary>, StoreError>> + Send;

    /// Up to `limit` tasks of one shard of a step in id order, after the
    /// id `after` (from the start with `None`): one query of the shard's
    /// partition, never the table.
    fn shard_page(
        &self,
        meta: &StepMeta,
        shard: u16,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<TaskPage, StoreError>> + Send;

    /// Keeps the record of one load of `step`, beside the step.
    fn record_load(
        &self,
        step: &str,
        record: &LoadRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The newest `limit` load records of `step`, newest first: one
    /// request whatever the step's size.
    fn loads(
        &self,
        step: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LoadRecord>, StoreError>> + Send;

    /// The running tasks of a step, their owners and lease expiries
    /// (bounded by the fleet).
    fn running(
        &self,
        meta: &StepMeta,
    ) -> impl Future<Output = Result<Vec<RunningTask>, StoreError>> + Send;

    /// How many tasks of each shard of a step (indexed by shard) are
    /// pending or running: where a claim may find work now or once a lease
    /// expires. A hint for choosing where to look: on DynamoDB exact as the
    /// counts of `status` are, one request whatever the number of shards
    /// and tasks; the embedded store counts each state up to 1,024 a shard,
    /// so that the cost does not grow with the step.
    fn open_per_shard(
        &self,
        meta: &StepMeta,
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// How many tasks of `step` wait, and how many are pending or running.
    /// On DynamoDB one request (the counters), whatever the shard count.
    fn unfinished(
        &self,
        step: &str,
    ) -> impl Future<Output = Result<Unfinished, StoreError>> + Send {
        async move {
            let status = self.status(Some(step)).await?;
            Ok(status
                .first()
                .map_or_else(Unfinished::default, |s| Unfinished {
                    waiting: s.waiting,
                    open: s.pending + s.running,
                }))
        }
    }

    /// Up to `limit` tasks of one shard that may be claimable at `now`:
    /// `pending` ones whose ready time has come, or (`state` = running)
    /// ones whose lease expired more than [`CLOCK_SKEW_MARGIN`] ago; from
    /// the end of the index that `order` says.
    fn candidates(
        &self,
        meta: &StepMeta,
        shard: u16,
        state: TaskState,
        now: Timestamp,
        limit: usize,
        order: Order,
    ) -> impl Future<Output = Result<Vec<Candidate>, StoreError>> + Send;

    /// Claims `candidate` for `owner` with one conditional write: state
    /// `running`, attempt + 1, lease until `now + lease`. A `running`
    /// candidate is read and, if its lease really expired, reclaimed with
    /// [`TaskStore::reclaim`].
    fn claim(
        &self,
        meta: &StepMeta,
        candidate: &Candidate,
        owner: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Reclaims `old` (as read at `now`, its lease expired): the dead
    /// attempt is recorded as `lost`; the task is claimed for `owner`, or
    /// failed on its last attempt. The write holds only while `old` is
    /// still the stored attempt and its lease is still expired.
    fn reclaim(
        &self,
        meta: &StepMeta,
        old: &Task,
        owner: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Extends the lease of a task we hold until `until`.
    fn heartbeat(
        &self,
        meta: &StepMeta,
        task: &Task,
        until: Timestamp,
    ) -> impl Future<Output = Result<Fence, StoreError>> + Send;

    /// Ends the attempt of a task we hold (`task` as claimed).
    fn finish(
        &self,
        meta: &StepMeta,
        task: &Task,
        finish: &Finish,
    ) -> impl Future<Output = Result<Fence, StoreError>> + Send;
}

/// Builds a task in state `pending` from a sheet row.
pub fn new_pending_task(
    step: &str,
    script: &str,
    digest: &str,
    row: &NewTask,
    now: crate::time::Timestamp,
) -> Task {
    Task {
        step: step.to_owned(),
        task_id: row.task_id.clone(),
        state: TaskState::Pending,
        attempt: 0,
        failed_attempts: 0,
        script: script.to_owned(),
        script_digest: digest.to_owned(),
        env: row.env.clone(),
        columns: BTreeMap::new(),
        created_at: now,
        updated_at: now,
        ready_at: None,
        owner: None,
        lease_expires_at: None,
        started_at: None,
        finished_at: None,
        exit_code: None,
        signal: None,
        failure_class: None,
        output_tail: None,
        log_uri: None,
        retried_by: None,
        retried_at: None,
        cancelled_by: None,
        cancelled_at: None,
        history: Vec::new(),
        after: Vec::new(),
        waiting_on: Vec::new(),
        dependents: Vec::new(),
        reason: None,
        escalated_to: None,
        expires_at: None,
    }
}
