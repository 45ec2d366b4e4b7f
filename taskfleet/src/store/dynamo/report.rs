//! What `taskctl status` and friends read: counts per step, failed tasks,
//! running tasks, and the repair of counters.
//!
//! Counts come from the per-shard counter items and the running partitions
//! of the `by_state` index, never from the tasks themselves: `status` costs
//! `1 + steps * (1 + shards)` requests whatever the number of tasks. What a
//! claiming agent needs, how many tasks of each shard are open, comes from
//! the counter items alone: one request. (`recount`, the repair of the
//! counters, is in `recount.rs`.)

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Select};
use futures::{StreamExt, TryStreamExt};

use super::errors::is_retryable;
use super::{DynamoStore, Item, number, s};
use crate::model::{FailedTask, StepMeta, StepStatus, TaskState};
use crate::schema::{self, attr};
use crate::store::{StoreError, Unfinished};
use crate::time::Timestamp;

/// Most requests one `status` keeps in flight.
const STATUS_CONCURRENCY: usize = 32;

/// The `done` tasks of one counter item that have expired by `now` (its
/// `expiring_*` counters whose time has come): still in its `loaded` and
/// `done`, gone from the step (see [`crate::schema`], "Counters").
pub(super) fn expired_in(item: &Item, now: Timestamp) -> i64 {
    item.keys()
        .filter(|name| expired_slot(name, now))
        .filter_map(|name| number(item, name))
        .sum()
}

/// Whether `name` is an expiry counter whose time has come at `now`.
pub(super) fn expired_slot(name: &str, now: Timestamp) -> bool {
    schema::expiring_at(name).is_some_and(|at| Timestamp::from_secs(at) <= now)
}

impl DynamoStore {
    /// The step's counter items, one per shard that ever had a task: one
    /// strongly consistent query of one small partition.
    pub(super) async fn counter_items(&self, step: &str) -> Result<Vec<Item>, StoreError> {
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_values(":pk", s(&schema::counts_pk(step)))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.classify("Query", &e))
    }

    /// Tasks of each shard that are pending or running, from the counters
    /// alone (loaded less done, failed and waiting): one request.
    pub(super) async fn open_of(&self, meta: &StepMeta) -> Result<Vec<u64>, StoreError> {
        let mut open = vec![0; usize::from(meta.shards)];
        for item in self.counter_items(&meta.step).await? {
            let shard = item
                .get(attr::SK)
                .and_then(|v| v.as_s().ok())
                .and_then(|sk| sk.parse::<usize>().ok());
            let Some(slot) = shard.and_then(|k| open.get_mut(k)) else {
                continue;
            };
            let get = |name: &str| number(&item, name).unwrap_or(0);
            let n = get(attr::LOADED)
                - get(attr::DONE)
                - get(attr::FAILED)
                - get(attr::WAITING)
                - get(attr::CANCELLED);
            *slot = n.max(0).unsigned_abs();
        }
        Ok(open)
    }

    /// What of a step is not finished, from the counters alone: one
    /// request.
    pub(super) async fn unfinished_of(&self, step: &str) -> Result<Unfinished, StoreError> {
        let mut out = Unfinished::default();
        for item in self.counter_items(step).await? {
            let get = |name: &str| number(&item, name).unwrap_or(0);
            let waiting = get(attr::WAITING);
            let open = get(attr::LOADED)
                - get(attr::DONE)
                - get(attr::FAILED)
                - get(attr::CANCELLED)
                - waiting;
            out.waiting += waiting.max(0).unsigned_abs();
            out.open += open.max(0).unsigned_abs();
        }
        Ok(out)
    }

    pub(super) async fn counts_of(&self, meta: &StepMeta) -> Result<StepStatus, StoreError> {
        let counters = self.counter_items(&meta.step).await?;
        let now = Timestamp::now();
        let sum = |name: &str| -> u64 {
            counters
                .iter()
                .map(|c| {
                    let n = number(c, name).unwrap_or(0);
                    // Expired tasks are gone, deleted by the TTL or not.
                    if name == attr::LOADED || name == attr::DONE {
                        n - expired_in(c, now)
                    } else {
                        n
                    }
                })
                .sum::<i64>()
                .max(0)
                .unsigned_abs()
        };
        let (total, done, failed, waiting, cancelled) = (
            sum(attr::LOADED),
            sum(attr::DONE),
            sum(attr::FAILED),
            sum(attr::WAITING),
            sum(attr::CANCELLED),
        );
        let running = futures::stream::iter(0..meta.shards)
            .map(|shard| self.count_in_state(&meta.step, TaskState::Running, shard))
            .buffer_unordered(STATUS_CONCURRENCY)
            .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
            .await?;
        // More tasks accounted for than loaded: a counter is wrong (or the
        // index lags a moment behind a transition). Shown, never hidden.
        let accounted = done + failed + waiting + cancelled + running;
        let counts_drift = accounted > total;
        let pending = total.saturating_sub(accounted);
        Ok(StepStatus {
            step: meta.step.clone(),
            total,
            waiting,
            pending,
            running,
            done,
            failed,
            cancelled,
            percent_done: StepStatus::percent(done, total, cancelled),
            max_attempts: meta.settings.max_attempts,
            counts_drift,
        })
    }

    /// Counts one shard's index entries in `state`. Only used for states
    /// whose population is bounded by the fleet (running).
    pub(super) async fn count_in_state(
        &self,
        step: &str,
        state: TaskState,
        shard: u16,
    ) -> Result<u64, StoreError> {
        let pages: Vec<_> = self
            .state_partition(step, state, shard)
            .select(Select::Count)
            .into_paginator()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.classify("Query", &e))?;
        Ok(pages
            .iter()
            .map(|p| u64::try_from(p.count()).unwrap_or(0))
            .sum())
    }

    pub(super) async fn failed_of(
        &self,
        meta: &StepMeta,
        limit: usize,
    ) -> Result<Vec<FailedTask>, StoreError> {
        // Newest first in each shard, as many pages as `limit` needs.
        let page = i32::try_from(limit.min(1000)).unwrap_or(1000).max(1);
        let per_shard: Vec<Vec<Item>> = futures::stream::iter(0..meta.shards)
            .map(|shard| async move {
                let mut items = self
                    .state_partition(&meta.step, TaskState::Failed, shard)
                    .scan_index_forward(false)
                    .limit(page)
                    .into_paginator()
                    .items()
                    .send();
                let mut out = Vec::new();
                while out.len() < limit {
                    match items.next().await {
                        Some(item) => out.push(item.map_err(|e| self.classify("Query", &e))?),
                        None => break,
                    }
                }
                Ok::<_, StoreError>(out)
            })
            .buffer_unordered(STATUS_CONCURRENCY)
            .try_collect()
            .await?;
        let mut entries: Vec<Item> = per_shard.into_iter().flatten().collect();
        let finished = |i: &Item| number(i, attr::STATE_AT);
        entries.sort_by_key(|i| std::cmp::Reverse(finished(i)));
        entries.truncate(limit);

        // The index holds no output; read the tails and logs of the listed
        // tasks.
        let mut tails: HashMap<String, String> = HashMap::new();
        let mut logs: HashMap<String, String> = HashMap::new();
        for chunk in entries.chunks(100) {
            let keys: Vec<Item> = chunk
                .iter()
                .map(|i| {
                    HashMap::from([
                        (attr::PK.to_owned(), i[attr::PK].clone()),
                        (attr::SK.to_owned(), i[attr::SK].clone()),
                    ])
                })
                .collect();
            for item in self
                .batch_get(keys, &[attr::SK, attr::OUTPUT_TAIL, attr::LOG_URI])
                .await?
            {
                let Some(AttributeValue::S(id)) = item.get(attr::SK) else {
                    continue;
                };
                if let Some(AttributeValue::S(tail)) = item.get(attr::OUTPUT_TAIL) {
                    tails.insert(id.clone(), tail.clone());
                }
                if let Some(AttributeValue::S(log)) = item.get(attr::LOG_URI) {
                    logs.insert(id.clone(), log.clone());
                }
            }
        }
        Ok(entries
            .iter()
            .map(|i| {
                let id = i
                    .get(attr::SK)
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default();
                FailedTask {
                    step: meta.step.clone(),
                    attempt: number(i, attr::ATTEMPT)
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(0),
                    exit_code: number(i, attr::EXIT_CODE).and_then(|n| i32::try_from(n).ok()),
                    signal: number(i, attr::SIGNAL).and_then(|n| i32::try_from(n).ok()),
                    failure_class: i
                        .get(attr::FAILURE_CLASS)
                        .and_then(|v| serde_dynamo::from_attribute_value(v.clone()).ok()),
                    finished_at: number(i, attr::FINISHED_AT).map(Timestamp::from_millis),
                    output_tail: tails.remove(&id),
                    log_uri: logs.remove(&id),
                    task_id: id,
                }
            })
            .collect())
    }

    /// BatchGetItem with `projection` (whole items when empty), repeating
    /// unprocessed keys.
    pub(super) async fn batch_get(
        &self,
        keys: Vec<Item>,
        projection: &[&str],
    ) -> Result<Vec<Item>, StoreError> {
        let (projection_expr, names) = super::expr::projection(projection);
        let mut found = Vec::new();
        let mut pending = keys;
        let mut tries = 0;
        while !pending.is_empty() {
            tries += 1;
            let mut request = KeysAndAttributes::builder()
                .set_keys(Some(pending.clone()))
                .consistent_read(true);
            // No projection: whole items.
            if !projection.is_empty() {
                request = request
                    .projection_expression(&projection_expr)
                    .set_expression_attribute_names(Some(names.clone()));
            }
            let request = request.build().expect("keys are set");
            match self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
            {
                Ok(out) => {
                    if let Some(items) = out.responses().and_then(|r| r.get(&self.table)) {
                        found.extend(items.iter().cloned());
                    }
                    pending = out
                        .unprocessed_keys()
                        .and_then(|u| u.get(&self.table))
                        .map(|k| k.keys().to_vec())
                        .unwrap_or_default();
                }
                Err(e)
                    if is_retryable(&e)
                        || e.as_service_error().is_some_and(|se| {
                            se.is_provisioned_throughput_exceeded_exception()
                                || se.is_request_limit_exceeded()
                                || se.is_throttling_exception()
                                || se.is_internal_server_error()
                        }) => {}
                Err(e) => return Err(self.classify("BatchGetItem", &e)),
            }
            if pending.is_empty() {
                break;
            }
            self.backoff("BatchGetItem", tries, pending.len()).await?;
        }
        Ok(found)
    }

    /// The running tasks of a step and their owners.
    pub(super) async fn running_of(
        &self,
        meta: &StepMeta,
    ) -> Result<Vec<crate::store::RunningTask>, StoreError> {
        let mut out = Vec::new();
        for shard in 0..meta.shards {
            let items: Vec<Item> = self
                .state_partition(&meta.step, TaskState::Running, shard)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| self.classify("Query", &e))?;
            out.extend(items.iter().map(|i| {
                let text = |a: &str| {
                    i.get(a)
                        .and_then(|v| v.as_s().ok())
                        .cloned()
                        .unwrap_or_default()
                };
                // A running task's index time is its lease expiry.
                let expires = i
                    .get(attr::STATE_AT)
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_default();
                crate::store::RunningTask {
                    task_id: text(attr::SK),
                    owner: text(attr::OWNER),
                    lease_expires_at: crate::time::Timestamp::from_millis(expires),
                }
            }));
        }
        Ok(out)
    }
}
