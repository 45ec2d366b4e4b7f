//! One type for "whichever store the user named": the binaries hold a
//! [`Store`] and never learn which kind it is.

use super::dynamo::{DynamoStore, InitOutcome};
use super::sqlite::SqliteStore;
use super::{
    Candidate, Claim, Correction, Fence, Finish, InsertOutcome, Order, ReplaceOutcome,
    SettingsChange, StepChange, StoreError, TaskStore,
};
use crate::model::{FailedTask, LoadLock, StepMeta, StepStatus, Task, TaskState};
use crate::time::Timestamp;

/// The DynamoDB table or the embedded SQLite file.
#[derive(Debug, Clone)]
pub enum Store {
    /// A DynamoDB table.
    Dynamo(DynamoStore),
    /// The embedded store.
    Sqlite(SqliteStore),
}

impl Store {
    /// Creates what holds the tasks (table or file), or checks that the
    /// existing one matches.
    pub async fn init(&self) -> Result<InitOutcome, StoreError> {
        match self {
            Store::Dynamo(s) => s.init().await,
            // Opening created the file and schema already.
            Store::Sqlite(_) => Ok(InitOutcome::Created),
        }
    }

    /// Checks that the store exists and has the expected schema.
    pub async fn check(&self) -> Result<(), StoreError> {
        match self {
            Store::Dynamo(s) => s.check_table().await,
            Store::Sqlite(_) => Ok(()),
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $body:expr) => {
        match $self {
            Store::Dynamo($s) => $body,
            Store::Sqlite($s) => $body,
        }
    };
}

impl TaskStore for Store {
    fn describe(&self) -> String {
        each!(self, s => s.describe())
    }

    async fn ensure_step(
        &self,
        step: &str,
        change: &SettingsChange,
    ) -> Result<(StepMeta, StepChange), StoreError> {
        each!(self, s => s.ensure_step(step, change).await)
    }

    async fn ensure_step_for_load(
        &self,
        step: &str,
        change: &SettingsChange,
        lock: &LoadLock,
    ) -> Result<(StepMeta, StepChange), StoreError> {
        each!(self, s => s.ensure_step_for_load(step, change, lock).await)
    }

    async fn put_first(
        &self,
        meta: &StepMeta,
        lock: &LoadLock,
        tasks: &[Task],
    ) -> Result<usize, StoreError> {
        each!(self, s => s.put_first(meta, lock, tasks).await)
    }

    async fn count_first(
        &self,
        meta: &StepMeta,
        lock: &LoadLock,
        renewed: Timestamp,
        counts: &[(u16, Vec<(&'static str, i64)>)],
    ) -> Result<(), StoreError> {
        each!(self, s => s.count_first(meta, lock, renewed, counts).await)
    }

    async fn end_first_load(&self, meta: &StepMeta, lock: &LoadLock) -> Result<(), StoreError> {
        each!(self, s => s.end_first_load(meta, lock).await)
    }

    async fn insert(&self, meta: &StepMeta, tasks: &[Task]) -> Result<InsertOutcome, StoreError> {
        each!(self, s => s.insert(meta, tasks).await)
    }

    async fn insert_after(
        &self,
        meta: &StepMeta,
        tasks: &[Task],
        after: &[String],
    ) -> Result<InsertOutcome, StoreError> {
        each!(self, s => s.insert_after(meta, tasks, after).await)
    }

    async fn replace(
        &self,
        meta: &StepMeta,
        old: &Task,
        new: &Task,
    ) -> Result<ReplaceOutcome, StoreError> {
        each!(self, s => s.replace(meta, old, new).await)
    }

    async fn recount(&self, meta: &StepMeta, apply: bool) -> Result<Vec<Correction>, StoreError> {
        each!(self, s => s.recount(meta, apply).await)
    }

    async fn status(&self, step: Option<&str>) -> Result<Vec<StepStatus>, StoreError> {
        each!(self, s => s.status(step).await)
    }

    async fn failed(
        &self,
        step: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FailedTask>, StoreError> {
        each!(self, s => s.failed(step, limit).await)
    }

    async fn task(&self, step: &str, task_id: &str) -> Result<Option<Task>, StoreError> {
        each!(self, s => s.task(step, task_id).await)
    }

    async fn step(&self, step: &str) -> Result<Option<StepMeta>, StoreError> {
        each!(self, s => TaskStore::step(s, step).await)
    }

    async fn retry(
        &self,
        meta: &StepMeta,
        task_id: &str,
        attempt: u32,
        by: &str,
    ) -> Result<super::ReplaceOutcome, StoreError> {
        each!(self, s => s.retry(meta, task_id, attempt, by).await)
    }

    async fn in_state(
        &self,
        meta: &StepMeta,
        shard: u16,
        state: crate::model::TaskState,
        before: crate::time::Timestamp,
        after: Option<&super::PruneCursor>,
        limit: usize,
    ) -> Result<(Vec<Task>, Option<super::PruneCursor>), StoreError> {
        each!(self, s => s.in_state(meta, shard, state, before, after, limit).await)
    }

    async fn steps(&self) -> Result<Vec<StepMeta>, StoreError> {
        each!(self, s => TaskStore::steps(s).await)
    }

    async fn remove_step(&self, meta: &StepMeta) -> Result<(), StoreError> {
        each!(self, s => s.remove_step(meta).await)
    }

    async fn cancel(
        &self,
        meta: &StepMeta,
        task: &Task,
        by: &str,
    ) -> Result<super::ReplaceOutcome, StoreError> {
        each!(self, s => s.cancel(meta, task, by).await)
    }

    async fn prune(&self, meta: &StepMeta, tasks: &[Task]) -> Result<usize, StoreError> {
        each!(self, s => s.prune(meta, tasks).await)
    }

    async fn find(&self, task_id: &str) -> Result<Vec<crate::model::TaskSummary>, StoreError> {
        each!(self, s => s.find(task_id).await)
    }

    async fn shard_page(
        &self,
        meta: &StepMeta,
        shard: u16,
        after: Option<&str>,
        limit: usize,
    ) -> Result<crate::model::TaskPage, StoreError> {
        each!(self, s => s.shard_page(meta, shard, after, limit).await)
    }

    async fn record_load(
        &self,
        step: &str,
        record: &crate::model::LoadRecord,
    ) -> Result<(), StoreError> {
        each!(self, s => s.record_load(step, record).await)
    }

    async fn loads(
        &self,
        step: &str,
        limit: usize,
    ) -> Result<Vec<crate::model::LoadRecord>, StoreError> {
        each!(self, s => s.loads(step, limit).await)
    }

    async fn running(&self, meta: &StepMeta) -> Result<Vec<super::RunningTask>, StoreError> {
        each!(self, s => s.running(meta).await)
    }

    async fn open_per_shard(&self, meta: &StepMeta) -> Result<Vec<u64>, StoreError> {
        each!(self, s => s.open_per_shard(meta).await)
    }

    async fn unfinished(&self, step: &str) -> Result<super::Unfinished, StoreError> {
        each!(self, s => s.unfinished(step).await)
    }

    async fn candidates(
        &self,
        meta: &StepMeta,
        shard: u16,
        state: TaskState,
        now: Timestamp,
        limit: usize,
        order: Order,
    ) -> Result<Vec<Candidate>, StoreError> {
        each!(self, s => s.candidates(meta, shard, state, now, limit, order).await)
    }

    async fn claim(
        &self,
        meta: &StepMeta,
        candidate: &Candidate,
        owner: &str,
        now: Timestamp,
    ) -> Result<Claim, StoreError> {
        each!(self, s => s.claim(meta, candidate, owner, now).await)
    }

    async fn reclaim(
        &self,
        meta: &StepMeta,
        old: &Task,
        owner: &str,
        now: Timestamp,
    ) -> Result<Claim, StoreError> {
        each!(self, s => s.reclaim(meta, old, owner, now).await)
    }

    async fn heartbeat(
        &self,
        meta: &StepMeta,
        task: &Task,
        until: Timestamp,
    ) -> Result<Fence, StoreError> {
        each!(self, s => s.heartbeat(meta, task, until).await)
    }

    async fn finish(
        &self,
        meta: &StepMeta,
        task: &Task,
        finish: &Finish,
    ) -> Result<Fence, StoreError> {
        each!(self, s => s.finish(meta, task, finish).await)
    }
}
