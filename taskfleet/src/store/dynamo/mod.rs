//! The DynamoDB store: the task table of [`crate::schema`], through the
//! AWS SDK.
//!
//! Guarantees kept here:
//! - Every task write renders a [`crate::transition::Transition`]: its
//!   guard is the condition expression, its changes the update expression.
//!   A transition that changes counters is one `TransactWriteItems` with
//!   its counter update, so counts and tasks cannot drift apart. Loading is
//!   no exception: each batch of new tasks is one transaction of
//!   conditional puts (never overwriting a task that exists) and the
//!   counter update; the first load of a new step alone writes plain
//!   batches, under a lock, and counts behind them (see `first_load`).
//! - Nothing here scans the table. `status` costs `1 + steps * (1 + shards)`
//!   requests whatever the number of tasks.
//! - A lost condition is a value ([`crate::store::Fence::Lost`],
//!   [`crate::store::Claim::Lost`]), not an error.
//!
//! # Layout
//!
//! - `admin`: creating and checking the table; steps.
//! - `load`: inserting and replacing tasks.
//! - `first_load`: a new step's first load, with plain batch writes under
//!   a lock.
//! - `lease`: claim, reclaim, heartbeat and finish.
//! - `report`: status, failed tasks, running tasks, recount.
//! - `expr`: transitions rendered as expressions.
//! - `errors`: SDK errors as [`StoreError`]s; lost races and retries.

mod admin;
mod browse;
mod deps;
mod errors;
mod expr;
mod first_load;
mod lease;
mod load;
mod prune;
mod recount;
mod report;

use std::collections::HashMap;

pub use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{
    Candidate, Claim, Correction, Fence, Finish, InsertOutcome, Order, ReplaceOutcome,
    SettingsChange, StepChange, StoreError, TaskStore,
};
use crate::model::{FailedTask, LoadLock, StepMeta, StepStatus, Task, TaskState};
use crate::retry::RetryPolicy;
use crate::schema::{self, STEPS_PK, attr};
use crate::time::Timestamp;

type Item = HashMap<String, AttributeValue>;

/// The DynamoDB task table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    endpoint: String,
    retry: RetryPolicy,
    /// Steps whose tasks this store wrote as dependents: their key layout
    /// (a step's shard count never changes).
    layouts: std::sync::Arc<std::sync::Mutex<HashMap<String, StepMeta>>>,
}

/// What `init` found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// The table was created and is active.
    Created,
    /// The table existed and matches the schema.
    AlreadyExists,
}

impl DynamoStore {
    /// A store over `table`, using `client` as configured by the caller.
    /// `endpoint` describes where the client points, for messages.
    pub fn new(client: Client, table: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            endpoint: endpoint.into(),
            retry: RetryPolicy::default(),
            layouts: std::sync::Arc::default(),
        }
    }

    /// Uses `retry` for unprocessed items and throttling.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }
    /// The stored step, if any.
    pub async fn read_step(&self, step: &str) -> Result<Option<StepMeta>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::PK, s(STEPS_PK))
            .key(attr::SK, s(step))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.classify("GetItem", &e))?;
        out.item().map(|i| decode(step, i.clone())).transpose()
    }

    pub(super) async fn required_step(&self, step: &str) -> Result<StepMeta, StoreError> {
        self.read_step(step)
            .await?
            .ok_or_else(|| StoreError::StepNotFound {
                step: step.to_owned(),
                table: self.table.clone(),
            })
    }

    /// Every step, in name order. Reads the step list only.
    pub async fn steps(&self) -> Result<Vec<StepMeta>, StoreError> {
        let items: Vec<Item> = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_values(":pk", s(STEPS_PK))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.classify("Query", &e))?;
        items.into_iter().map(|i| decode(STEPS_PK, i)).collect()
    }

    /// Waits before the next try of a batch request, or reports that the
    /// retry budget is spent with `remaining` items not done.
    pub(super) async fn backoff(
        &self,
        operation: &'static str,
        tries: u32,
        remaining: usize,
    ) -> Result<(), StoreError> {
        if tries >= self.retry.max_attempts {
            return Err(StoreError::RetriesExhausted {
                operation,
                attempts: tries,
                remaining,
            });
        }
        tokio::time::sleep(self.retry.delay(tries - 1)).await;
        Ok(())
    }

    /// A query of one partition of the `by_state` index: the tasks of
    /// `step` in `state` in `shard`.
    pub(super) fn state_partition(
        &self,
        step: &str,
        state: TaskState,
        shard: u16,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.table)
            .index_name(schema::BY_STATE_INDEX)
            .key_condition_expression("#spk = :spk")
            .expression_attribute_names("#spk", attr::STATE_PK)
            .expression_attribute_values(":spk", s(&schema::state_pk(step, state, shard)))
    }

    fn step_item(meta: &StepMeta) -> Item {
        let mut item: Item = serde_dynamo::to_item(meta).expect("a step always serialises");
        item.insert(attr::PK.to_owned(), s(STEPS_PK));
        item.insert(attr::SK.to_owned(), s(&meta.step));
        item
    }
}

/// The item that stores `task`: its attributes, keys and index entry, with
/// `state_at` its index time (which a transition decides, see
/// [`crate::transition::Transition::state_at`]).
pub fn task_item(meta: &StepMeta, task: &Task, state_at: Timestamp) -> Item {
    let mut item: Item = serde_dynamo::to_item(task).expect("a task always serialises");
    let shard = schema::shard_of(&task.task_id, meta.shards);
    item.insert(attr::PK.to_owned(), s(&schema::task_pk(&meta.step, shard)));
    item.insert(attr::SK.to_owned(), s(&task.task_id));
    item.insert(
        attr::STATE_PK.to_owned(),
        s(&schema::state_pk(&meta.step, task.state, shard)),
    );
    item.insert(attr::STATE_AT.to_owned(), n(state_at.as_millis()));
    item
}

impl TaskStore for DynamoStore {
    fn describe(&self) -> String {
        format!("DynamoDB table '{}' at {}", self.table, self.endpoint)
    }

    async fn ensure_step(
        &self,
        step: &str,
        change: &SettingsChange,
    ) -> Result<(StepMeta, StepChange), StoreError> {
        self.ensure_step_item(step, change, None).await
    }

    async fn ensure_step_for_load(
        &self,
        step: &str,
        change: &SettingsChange,
        lock: &LoadLock,
    ) -> Result<(StepMeta, StepChange), StoreError> {
        self.step_for_load(step, change, lock).await
    }

    async fn put_first(
        &self,
        meta: &StepMeta,
        lock: &LoadLock,
        tasks: &[Task],
    ) -> Result<usize, StoreError> {
        self.put_plain(meta, lock, tasks).await
    }

    async fn count_first(
        &self,
        meta: &StepMeta,
        lock: &LoadLock,
        renewed: Timestamp,
        counts: &[(u16, Vec<(&'static str, i64)>)],
    ) -> Result<(), StoreError> {
        self.count_plain(meta, lock, renewed, counts).await
    }

    async fn end_first_load(&self, meta: &StepMeta, lock: &LoadLock) -> Result<(), StoreError> {
        self.release_first_load(&meta.step, lock).await
    }

    async fn insert(&self, meta: &StepMeta, tasks: &[Task]) -> Result<InsertOutcome, StoreError> {
        self.insert_tasks(meta, tasks).await
    }

    async fn insert_after(
        &self,
        meta: &StepMeta,
        tasks: &[Task],
        after: &[String],
    ) -> Result<InsertOutcome, StoreError> {
        self.insert_after_tasks(meta, tasks, after).await
    }

    async fn replace(
        &self,
        meta: &StepMeta,
        old: &Task,
        new: &Task,
    ) -> Result<ReplaceOutcome, StoreError> {
        self.replace_task(meta, old, new).await
    }

    async fn retry(
        &self,
        meta: &StepMeta,
        task_id: &str,
        attempt: u32,
        by: &str,
    ) -> Result<ReplaceOutcome, StoreError> {
        self.retry_task(meta, task_id, attempt, by).await
    }

    async fn recount(&self, meta: &StepMeta, apply: bool) -> Result<Vec<Correction>, StoreError> {
        self.recount_step(meta, apply).await
    }

    async fn status(&self, step: Option<&str>) -> Result<Vec<StepStatus>, StoreError> {
        let metas = match step {
            Some(step) => vec![self.required_step(step).await?],
            None => self.steps().await?,
        };
        let counts: Vec<_> = metas.iter().map(|meta| self.counts_of(meta)).collect();
        futures::future::try_join_all(counts).await
    }

    async fn failed(
        &self,
        step: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FailedTask>, StoreError> {
        let metas = match step {
            Some(step) => vec![self.required_step(step).await?],
            None => self.steps().await?,
        };
        let mut all = Vec::new();
        for meta in &metas {
            all.extend(self.failed_of(meta, limit).await?);
        }
        Ok(all)
    }

    async fn task(&self, step: &str, task_id: &str) -> Result<Option<Task>, StoreError> {
        let meta = self.required_step(step).await?;
        // An expired task is gone, deleted by the TTL or not.
        let now = Timestamp::now();
        Ok(self
            .read_task(&meta, task_id)
            .await?
            .filter(|t| !t.expired(now)))
    }

    async fn step(&self, step: &str) -> Result<Option<StepMeta>, StoreError> {
        self.read_step(step).await
    }

    async fn find(&self, task_id: &str) -> Result<Vec<crate::model::TaskSummary>, StoreError> {
        let steps = self.steps().await?;
        self.find_task(&steps, task_id).await
    }

    async fn shard_page(
        &self,
        meta: &StepMeta,
        shard: u16,
        after: Option<&str>,
        limit: usize,
    ) -> Result<crate::model::TaskPage, StoreError> {
        self.page_of_shard(meta, shard, after, limit).await
    }

    async fn in_state(
        &self,
        meta: &StepMeta,
        shard: u16,
        state: TaskState,
        before: Timestamp,
        after: Option<&super::PruneCursor>,
        limit: usize,
    ) -> Result<(Vec<Task>, Option<super::PruneCursor>), StoreError> {
        self.in_state_of(meta, shard, state, before, after, limit)
            .await
    }

    async fn steps(&self) -> Result<Vec<StepMeta>, StoreError> {
        DynamoStore::steps(self).await
    }

    async fn remove_step(&self, meta: &StepMeta) -> Result<(), StoreError> {
        self.remove_step_of(meta).await
    }

    async fn cancel(
        &self,
        meta: &StepMeta,
        task: &Task,
        by: &str,
    ) -> Result<ReplaceOutcome, StoreError> {
        self.cancel_task(meta, task, by).await
    }

    async fn prune(&self, meta: &StepMeta, tasks: &[Task]) -> Result<usize, StoreError> {
        self.prune_tasks(meta, tasks).await
    }

    async fn record_load(
        &self,
        step: &str,
        record: &crate::model::LoadRecord,
    ) -> Result<(), StoreError> {
        self.put_load_record(step, record).await
    }

    async fn loads(
        &self,
        step: &str,
        limit: usize,
    ) -> Result<Vec<crate::model::LoadRecord>, StoreError> {
        self.load_records(step, limit).await
    }

    async fn running(&self, meta: &StepMeta) -> Result<Vec<crate::store::RunningTask>, StoreError> {
        self.running_of(meta).await
    }

    async fn open_per_shard(&self, meta: &StepMeta) -> Result<Vec<u64>, StoreError> {
        self.open_of(meta).await
    }

    async fn unfinished(&self, step: &str) -> Result<super::Unfinished, StoreError> {
        self.unfinished_of(step).await
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
        self.candidates_of(meta, shard, state, now, limit, order)
            .await
    }

    async fn claim(
        &self,
        meta: &StepMeta,
        candidate: &Candidate,
        owner: &str,
        now: Timestamp,
    ) -> Result<Claim, StoreError> {
        self.claim_task(meta, candidate, owner, now).await
    }

    async fn reclaim(
        &self,
        meta: &StepMeta,
        old: &Task,
        owner: &str,
        now: Timestamp,
    ) -> Result<Claim, StoreError> {
        self.reclaim_task(meta, old, owner, now).await
    }

    async fn heartbeat(
        &self,
        meta: &StepMeta,
        task: &Task,
        until: Timestamp,
    ) -> Result<Fence, StoreError> {
        self.heartbeat_task(meta, task, until).await
    }

    async fn finish(
        &self,
        meta: &StepMeta,
        task: &Task,
        finish: &Finish,
    ) -> Result<Fence, StoreError> {
        self.finish_task(meta, task, finish).await
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, item: Item) -> Result<T, StoreError> {
    serde_dynamo::from_item(item).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

/// A number attribute of `item`, if it has one that parses.
fn number(item: &Item, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}
