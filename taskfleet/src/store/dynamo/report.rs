//! What `taskctl status` and friends read: counts per step, failed tasks,
//! running tasks, and the repair of counters.
//!
//! Counts come from the per-shard counter items and the running partitions
//! of the `by_state` index, never from the tasks themselves: `status` costs
//! `1 + steps * (1 + shards)` requests whatever the number of tasks. What a
//! claiming agent needs, how many tasks of each shard are open, comes from
//! the counter items alone: one request.
//! `recount` is the exception, a repair tool: it counts a step's index
//! partitions (never the whole table) and corrects the counters.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Select};
use futures::{StreamExt, TryStreamExt};

use super::errors::{is_condition_failed, is_retryable};
use super::expr::Counter;
use super::{DynamoStore, Item, n, number, s};
use crate::model::{FailedTask, StepMeta, StepStatus, TaskState};
use crate::schema::{self, attr};
use crate::store::{Correction, StoreError, Unfinished};
use crate::time::Timestamp;
use crate::transition::counter_of;

/// Most requests one `status` keeps in flight.
const STATUS_CONCURRENCY: usize = 32;

/// Tries to correct one shard's counters while tasks keep moving.
const RECOUNT_TRIES: u32 = 5;

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
fn expired_slot(name: &str, now: Timestamp) -> bool {
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
    async fn count_in_state(
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

    /// Counts every state of one shard, and the counter item as stored,
    /// at `now` (returned). From the state index; but on a shard whose
    /// done tasks expire (the step's setting, or expiry counters on its
    /// counter item), from one consistent read of the shard's task
    /// partition instead: the index holds no expiry, and it lags the table
    /// while the TTL deletes tasks. There an expiry counter counts the
    /// expired tasks still in the table, which `loaded` and `done` count
    /// too, so that the counts stay exact as the TTL deletes them.
    async fn shard_counts(
        &self,
        meta: &StepMeta,
        shard: u16,
    ) -> Result<(Counts, Counts, Timestamp), StoreError> {
        let now = Timestamp::now();
        let stored = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::PK, s(&schema::counts_pk(&meta.step)))
            .key(attr::SK, s(&schema::shard_sk(shard)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.classify("GetItem", &e))?;
        let item = stored.item().cloned().unwrap_or_default();
        let has_expiring = item.keys().any(|k| schema::expiring_at(k).is_some());
        let mut counted: Counts = if meta.settings.expire_after.is_some() || has_expiring {
            self.partition_counts(&meta.step, shard).await?
        } else {
            let mut counted = Counts::new();
            let mut loaded = 0;
            for state in TaskState::ALL {
                let k = self.count_in_state(&meta.step, state, shard).await?;
                let k = i64::try_from(k).unwrap_or(i64::MAX);
                loaded += k;
                if let Some(c) = counter_of(state) {
                    counted.insert(Counter::Borrowed(c), k);
                }
            }
            counted.insert(Counter::Borrowed(attr::LOADED), loaded);
            counted
        };
        // Expiry counters of no task left go.
        for name in item.keys() {
            if schema::expiring_at(name).is_some() {
                counted.entry(Counter::Owned(name.clone())).or_insert(0);
            }
        }
        let stored = counted
            .keys()
            .map(|c| (c.clone(), number(&item, c).unwrap_or(0)))
            .collect();
        Ok((counted, stored, now))
    }

    /// The counters of one shard as its task partition says, read once,
    /// consistently, keeping only each task's state and expiry: every
    /// state's counter, `loaded`, and an expiry counter per expiry time of
    /// the done tasks that have one (expired or not).
    async fn partition_counts(&self, step: &str, shard: u16) -> Result<Counts, StoreError> {
        let items: Vec<Item> = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk")
            .projection_expression("#state, #exp")
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_names("#state", attr::STATE)
            .expression_attribute_names("#exp", attr::EXPIRES_AT)
            .expression_attribute_values(":pk", s(&schema::task_pk(step, shard)))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.classify("Query", &e))?;
        let mut counted = Counts::new();
        for state in TaskState::ALL {
            if let Some(c) = counter_of(state) {
                counted.insert(Counter::Borrowed(c), 0);
            }
        }
        counted.insert(
            Counter::Borrowed(attr::LOADED),
            i64::try_from(items.len()).unwrap_or(i64::MAX),
        );
        for item in &items {
            let state = item
                .get(attr::STATE)
                .and_then(|v| v.as_s().ok())
                .and_then(|v| TaskState::ALL.into_iter().find(|s| s.as_str() == v));
            if let Some(c) = state.and_then(counter_of) {
                *counted.entry(Counter::Borrowed(c)).or_default() += 1;
            }
            if let (Some(TaskState::Done), Some(at)) = (state, number(item, attr::EXPIRES_AT)) {
                *counted
                    .entry(Counter::Owned(schema::expiring_attr(at)))
                    .or_default() += 1;
            }
        }
        Ok(counted)
    }

    pub(super) async fn recount_step(
        &self,
        meta: &StepMeta,
        apply: bool,
    ) -> Result<Vec<Correction>, StoreError> {
        let mut corrections = Vec::new();
        for shard in 0..meta.shards {
            let mut tries = 0;
            loop {
                tries += 1;
                let (counted, stored, now) = self.shard_counts(meta, shard).await?;
                let mut wrong: Vec<(Counter, i64, i64)> = counted
                    .iter()
                    .filter(|(c, v)| stored[*c] != **v)
                    .map(|(c, v)| (c.clone(), stored[c], *v))
                    .collect();
                if wrong.is_empty() {
                    break;
                }
                // Expired tasks the TTL deleted are still in `loaded`,
                // `done` and their expiry counter: taking them off all
                // three changes no count, so it is made without being
                // reported (and not at all on a dry run).
                let drift = !same_counts(&stored, &counted, now);
                if !drift && !apply {
                    break;
                }
                wrong.sort_unstable();
                if !apply {
                    corrections.extend(wrong.into_iter().map(|(counter, was, now)| Correction {
                        step: meta.step.clone(),
                        shard,
                        counter: counter.into_owned(),
                        was,
                        now,
                    }));
                    break;
                }
                // Set the counted values only if no transition changed the
                // counters since they were read; else count again.
                let mut names = HashMap::new();
                let mut values = HashMap::new();
                let mut sets = Vec::new();
                let mut removes = Vec::new();
                let mut conditions = Vec::new();
                for (i, (counter, was, now)) in wrong.iter().enumerate() {
                    names.insert(format!("#c{i}"), counter.to_string());
                    values.insert(format!(":was{i}"), n(*was));
                    if *now == 0 && schema::expiring_at(counter).is_some() {
                        removes.push(format!("#c{i}"));
                    } else {
                        values.insert(format!(":now{i}"), n(*now));
                        sets.push(format!("#c{i} = :now{i}"));
                    }
                    conditions.push(if *was == 0 {
                        format!("(attribute_not_exists(#c{i}) OR #c{i} = :was{i})")
                    } else {
                        format!("#c{i} = :was{i}")
                    });
                }
                let written = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .key(attr::PK, s(&schema::counts_pk(&meta.step)))
                    .key(attr::SK, s(&schema::shard_sk(shard)))
                    .update_expression(update_expression(&sets, &removes))
                    .condition_expression(conditions.join(" AND "))
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(Some(values))
                    .send()
                    .await;
                match written {
                    Ok(_) if !drift => break,
                    Ok(_) => {
                        corrections.extend(wrong.into_iter().map(|(counter, was, now)| {
                            Correction {
                                step: meta.step.clone(),
                                shard,
                                counter: counter.into_owned(),
                                was,
                                now,
                            }
                        }));
                        break;
                    }
                    Err(e)
                        if (is_condition_failed(&e) || is_retryable(&e))
                            && tries < RECOUNT_TRIES =>
                    {
                        tokio::time::sleep(self.retry.delay(tries)).await;
                    }
                    Err(e) if is_condition_failed(&e) => {
                        return Err(StoreError::Service {
                            operation: "recount",
                            message: format!(
                                "the counters of step '{}' shard {shard} kept changing while they were recounted; run it again when fewer tasks are moving",
                                meta.step
                            ),
                        });
                    }
                    Err(e) => return Err(self.classify("UpdateItem", &e)),
                }
            }
        }
        Ok(corrections)
    }
}

/// `SET a, b REMOVE c`, without an empty clause.
fn update_expression(sets: &[String], removes: &[String]) -> String {
    let mut out = Vec::new();
    if !sets.is_empty() {
        out.push(format!("SET {}", sets.join(", ")));
    }
    if !removes.is_empty() {
        out.push(format!("REMOVE {}", removes.join(", ")));
    }
    out.join(" ")
}

/// Counter values by counter.
type Counts = HashMap<Counter, i64>;

/// Whether `a` and `b` give the same counts at `now`: every counter
/// equal, but for `loaded` and `done` less the expired tasks (the expiry
/// counters whose time has come), which need only agree less those.
fn same_counts(a: &Counts, b: &Counts, now: Timestamp) -> bool {
    let expired = |m: &Counts| -> i64 {
        m.iter()
            .filter(|(c, _)| expired_slot(c, now))
            .map(|(_, v)| v)
            .sum()
    };
    let (ea, eb) = (expired(a), expired(b));
    a.iter().all(|(c, v)| {
        let w = b.get(c).copied().unwrap_or(0);
        match c.as_ref() {
            attr::LOADED | attr::DONE => v - ea == w - eb,
            name if expired_slot(name, now) => true,
            _ => *v == w,
        }
    })
}
