//! A step's first load, at `BatchWriteItem` speed.
//!
//! A conditional insert ("no such task") costs a transaction: about half
//! the emulator's plain batch-write rate, and twice the write units on
//! DynamoDB. A step created by this load has no tasks but the ones this
//! load writes, and sheet ids are unique, so its tasks can be put without
//! a condition, provided that:
//!
//! - **No other load writes the step meanwhile.** The step is created with
//!   a lock on its item ([`LoadLock`]), renewed while the load runs. Other
//!   loads of the step wait for it ([`DynamoStore::step_for_load`]);
//!   a load that finds the lock of a load that died (lapsed, or its process
//!   gone from this host for [`GONE_SETTLE`]) recounts the step's `loaded`
//!   from its task partitions and frees it, then loads as usual, with
//!   conditions. Plain puts stop [`LOCK_MARGIN`] before the lock lapses;
//!   the rest go in with conditions.
//! - **No task is put twice.** An agent may claim a task as soon as it is
//!   written; putting it again would reset it. The SDK's own retries are
//!   off for these puts: items the service did not process, or a request
//!   it refused as a whole (throttling), are sent again; a request whose
//!   outcome is unknown (a timeout, a dropped connection, a server error)
//!   has its tasks inserted again with conditions instead, held back from
//!   claims for [`HOLD_BACK`] (a put still on its way could otherwise
//!   reset a claimed task), and those found written are counted as this
//!   load's.
//! - **Counts catch up.** Counters are added per shard after the puts
//!   land, in a transaction fenced by the lock (which it also renews). A
//!   load killed between a put and its count leaves the lock behind; the
//!   next load of the step recounts before it writes, and `taskctl
//!   recount` does the same by hand.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::types::{PutRequest, Select, TransactWriteItem, Update, WriteRequest};
use aws_smithy_types::error::display::DisplayErrorContext;

use super::errors::{Reason, cancellation_reasons, is_throttled_transaction, reason_kind};
use super::expr::{Counter, counter_update, sum_deltas};
use super::{DynamoStore, n, s, task_item};
use crate::model::{LoadLock, StepMeta, Task};
use crate::schema::{self, STEPS_PK, attr};
use crate::store::{SettingsChange, StepChange, StoreError};
use crate::time::Timestamp;
use crate::transition;

/// How long after its holder is seen gone a lock is taken over: more than
/// a plain put's deadline and the clock skew margin, so that no request of
/// the dead load lands after the recount.
const GONE_SETTLE: Duration = Duration::from_secs(15);

/// Plain puts stop this long before the lock lapses.
pub const LOCK_MARGIN: Duration = Duration::from_secs(10);

/// Items in one `BatchWriteItem`.
const BATCH_WRITE_ITEMS: usize = 25;

/// How long one plain batch may take before its outcome counts as unknown.
const PUT_DEADLINE: Duration = Duration::from_secs(5);

/// How long tasks whose plain put had an unknown outcome are kept from
/// claims: far past any time a request still on its way could land.
const HOLD_BACK: Duration = Duration::from_secs(60);

/// The tasks of `requests`, ready at `ready` if given.
fn remaining(
    requests: &[WriteRequest],
    by_id: &HashMap<&str, &Task>,
    ready: Option<Timestamp>,
) -> Vec<Task> {
    requests
        .iter()
        .filter_map(|r| r.put_request())
        .filter_map(|p| p.item().get(attr::SK))
        .filter_map(|v| v.as_s().ok())
        .filter_map(|id| by_id.get(id.as_str()))
        .map(|t| {
            let mut t = (*t).clone();
            if ready.is_some() {
                t.ready_at = ready;
            }
            t
        })
        .collect()
}

impl DynamoStore {
    /// The step for a load: created with `lock` held if it is new; if
    /// another load holds its first-load lock, waited for, or recounted and
    /// freed when that load died.
    pub(super) async fn step_for_load(
        &self,
        step: &str,
        change: &SettingsChange,
        lock: &LoadLock,
    ) -> Result<(StepMeta, StepChange), StoreError> {
        let mut first_change = None;
        let mut gone_since: Option<std::time::Instant> = None;
        loop {
            let (meta, changed) = self.ensure_step_item(step, change, Some(lock)).await?;
            let changed = *first_change.get_or_insert(changed);
            let Some(held) = meta.first_load.clone() else {
                return Ok((meta, changed));
            };
            if held == *lock {
                return Ok((meta, changed));
            }
            let now = Timestamp::now();
            // A holder gone from this host is not waited out, but requests
            // it sent may still land for a while.
            if held.holder_is_gone() {
                gone_since.get_or_insert_with(std::time::Instant::now);
            }
            let settled = gone_since.is_some_and(|at| at.elapsed() >= GONE_SETTLE);
            if held.until > now && !settled {
                tracing::info!(holder = %held.holder, "waiting for the first load of the step to end");
                let wait = Duration::from_millis((held.until.as_millis() - now.as_millis()) as u64);
                tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
                continue;
            }
            tracing::warn!(
                holder = %held.holder,
                "the first load of the step ended without counting all it wrote; recounting"
            );
            self.recount_loaded(&meta).await?;
            self.release_first_load(step, &held).await?;
        }
    }

    /// Puts `tasks` (all in one shard, none of them in the table unless
    /// put by this load) without conditions, while `lock` leaves time.
    /// Returns how many were written and are not counted yet: tasks
    /// inserted with conditions after an unknown outcome are counted
    /// already.
    pub(super) async fn put_plain(
        &self,
        meta: &StepMeta,
        lock: &LoadLock,
        tasks: &[Task],
    ) -> Result<usize, StoreError> {
        let mut uncounted = 0;
        for chunk in tasks.chunks(BATCH_WRITE_ITEMS) {
            uncounted += self.put_chunk(meta, lock, chunk).await?;
        }
        Ok(uncounted)
    }

    async fn put_chunk(
        &self,
        meta: &StepMeta,
        lock: &LoadLock,
        chunk: &[Task],
    ) -> Result<usize, StoreError> {
        let by_id: HashMap<&str, &Task> = chunk.iter().map(|t| (t.task_id.as_str(), t)).collect();
        let mut requests: Vec<WriteRequest> = chunk
            .iter()
            .map(|t| {
                let item = task_item(meta, t, transition::load_place(t));
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item))
                            .build()
                            .expect("item is set"),
                    )
                    .build()
            })
            .collect();
        let mut written = 0;
        let mut tries = 0;
        while !requests.is_empty() {
            tries += 1;
            let left = lock.until.as_millis() - Timestamp::now().as_millis();
            if left < LOCK_MARGIN.as_millis() as i64 {
                // Too close to the lock's end for plain puts (a throttled
                // table, a slow answer): the rest go in with conditions,
                // counted as they are written.
                let rest = remaining(&requests, &by_id, None);
                written += self.insert_tasks(meta, &rest).await?.existing.len();
                break;
            }
            let sent = requests.len();
            let result = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests.clone())
                .customize()
                .config_override(
                    aws_sdk_dynamodb::config::Builder::default()
                        .retry_config(RetryConfig::disabled())
                        .timeout_config(
                            aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                                .operation_timeout(PUT_DEADLINE)
                                .build(),
                        ),
                )
                .send()
                .await;
            match result {
                Ok(out) => {
                    let unprocessed = out
                        .unprocessed_items()
                        .and_then(|u| u.get(&self.table))
                        .cloned()
                        .unwrap_or_default();
                    written += sent - unprocessed.len();
                    requests = unprocessed;
                    if !requests.is_empty() {
                        self.backoff("BatchWriteItem", tries, requests.len())
                            .await?;
                    }
                }
                Err(e) if refused_whole(&e) => {
                    tracing::debug!(error = %DisplayErrorContext(&e), "plain puts refused; repeating");
                    self.backoff("BatchWriteItem", tries, requests.len())
                        .await?;
                }
                Err(e) if outcome_unknown(&e) => {
                    // Perhaps written, perhaps not, perhaps still on its way:
                    // insert with conditions (those that exist were written
                    // by this load), held back from claims until a put still
                    // on its way can no longer land, so that it cannot reset
                    // a claimed task.
                    tracing::debug!(error = %DisplayErrorContext(&e), "plain puts may have landed; inserting with conditions");
                    let held = Timestamp::now().plus(HOLD_BACK);
                    let again = remaining(&requests, &by_id, Some(held));
                    written += self.insert_tasks(meta, &again).await?.existing.len();
                    break;
                }
                Err(e) => return Err(self.classify("BatchWriteItem", &e)),
            }
        }
        Ok(written)
    }

    /// Adds `counts` (counter deltas per shard, of tasks written and not
    /// counted yet) to the step's counters and renews `lock` until
    /// `renewed`, in transactions fenced by the lock.
    pub(super) async fn count_plain(
        &self,
        meta: &StepMeta,
        lock: &LoadLock,
        renewed: Timestamp,
        counts: &[(u16, Vec<(&'static str, i64)>)],
    ) -> Result<(), StoreError> {
        let updates: Vec<Update> = counts
            .iter()
            .map(|(shard, deltas)| {
                let deltas = deltas.iter().map(|(c, by)| (Counter::Borrowed(*c), *by));
                (*shard, sum_deltas(deltas))
            })
            .filter(|(_, deltas)| !deltas.is_empty())
            .map(|(shard, deltas)| counter_update(&self.table, &meta.step, shard, &deltas))
            .collect();
        let mut chunks: Vec<Vec<Update>> = updates
            .chunks(crate::schema::MAX_TRANSACTION_ITEMS - 1)
            .map(<[Update]>::to_vec)
            .collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        for chunk in chunks {
            let mut tries = 0;
            loop {
                tries += 1;
                let mut items = vec![
                    TransactWriteItem::builder()
                        .update(self.lock_renewal(&meta.step, lock, renewed))
                        .build(),
                ];
                items.extend(
                    chunk
                        .iter()
                        .map(|u| TransactWriteItem::builder().update(u.clone()).build()),
                );
                let Err(err) = self
                    .client
                    .transact_write_items()
                    .set_transact_items(Some(items))
                    .send()
                    .await
                else {
                    break;
                };
                match cancellation_reasons(&err) {
                    Some(reasons) => {
                        let kinds: Vec<Reason> = reasons.iter().map(reason_kind).collect();
                        if kinds.first() == Some(&Reason::ConditionFailed) {
                            return Err(lock_lost(&meta.step));
                        }
                        if kinds.contains(&Reason::Other) {
                            return Err(self.classify("TransactWriteItems", &err));
                        }
                    }
                    None if is_throttled_transaction(&err) => {}
                    None => return Err(self.classify("TransactWriteItems", &err)),
                }
                self.backoff("TransactWriteItems", tries, chunk.len())
                    .await?;
            }
        }
        Ok(())
    }

    /// Makes each shard's `loaded` what its task partition holds, read
    /// with consistent reads of the table (not the index). Only a dead
    /// first load leaves `loaded` wrong, and no one else adds tasks to the
    /// step while its lock is there; agents never change `loaded`.
    async fn recount_loaded(&self, meta: &StepMeta) -> Result<(), StoreError> {
        for shard in 0..meta.shards {
            let mut tries = 0;
            loop {
                tries += 1;
                let stored = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .key(attr::PK, s(&schema::counts_pk(&meta.step)))
                    .key(attr::SK, s(&schema::shard_sk(shard)))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| self.classify("GetItem", &e))?
                    .item()
                    .and_then(|i| i.get(attr::LOADED))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse::<i64>().ok());
                let mut count = 0i64;
                let mut start = None;
                loop {
                    let page = self
                        .client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("#pk = :pk")
                        .expression_attribute_names("#pk", attr::PK)
                        .expression_attribute_values(":pk", s(&schema::task_pk(&meta.step, shard)))
                        .select(Select::Count)
                        .consistent_read(true)
                        .set_exclusive_start_key(start)
                        .send()
                        .await
                        .map_err(|e| self.classify("Query", &e))?;
                    count += i64::from(page.count());
                    start = page.last_evaluated_key().cloned();
                    if start.is_none() {
                        break;
                    }
                }
                if stored.unwrap_or(0) == count {
                    break;
                }
                let condition = match stored {
                    Some(was) => ("#l = :was", n(was)),
                    None => ("attribute_not_exists(#l) OR #l = :was", n(0)),
                };
                let written = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .key(attr::PK, s(&schema::counts_pk(&meta.step)))
                    .key(attr::SK, s(&schema::shard_sk(shard)))
                    .update_expression("SET #l = :now")
                    .condition_expression(condition.0)
                    .expression_attribute_names("#l", attr::LOADED)
                    .expression_attribute_values(":now", n(count))
                    .expression_attribute_values(":was", condition.1)
                    .send()
                    .await;
                match written {
                    Ok(_) => {
                        tracing::warn!(
                            shard,
                            was = stored.unwrap_or(0),
                            now = count,
                            "corrected the loaded count"
                        );
                        break;
                    }
                    Err(e) if super::errors::is_condition_failed(&e) => {
                        self.backoff("UpdateItem", tries, 1).await?;
                    }
                    Err(e) => return Err(self.classify("UpdateItem", &e)),
                }
            }
        }
        Ok(())
    }

    fn lock_renewal(&self, step: &str, lock: &LoadLock, until: Timestamp) -> Update {
        Update::builder()
            .table_name(&self.table)
            .key(attr::PK, s(STEPS_PK))
            .key(attr::SK, s(step))
            .update_expression("SET #fl.#until = :until")
            .condition_expression("#fl.#holder = :holder")
            .expression_attribute_names("#fl", attr::FIRST_LOAD)
            .expression_attribute_names("#until", "until")
            .expression_attribute_names("#holder", "holder")
            .expression_attribute_values(":until", n(until.as_millis()))
            .expression_attribute_values(":holder", s(&lock.holder))
            .build()
            .expect("table, key and expression are set")
    }

    /// Removes `lock` from the step, if it is still there.
    pub(super) async fn release_first_load(
        &self,
        step: &str,
        lock: &LoadLock,
    ) -> Result<(), StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(STEPS_PK))
            .key(attr::SK, s(step))
            .update_expression("REMOVE #fl")
            .condition_expression("#fl.#holder = :holder")
            .expression_attribute_names("#fl", attr::FIRST_LOAD)
            .expression_attribute_names("#holder", "holder")
            .expression_attribute_values(":holder", s(&lock.holder))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e) if super::errors::is_condition_failed(&e) => Ok(()),
            Err(e) => Err(self.classify("UpdateItem", &e)),
        }
    }
}

fn lock_lost(step: &str) -> StoreError {
    StoreError::LoadLockLost {
        step: step.to_owned(),
    }
}

/// Whether the service refused a whole batch before writing any of it.
fn refused_whole(
    err: &aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemError,
    >,
) -> bool {
    err.as_service_error().is_some_and(|e| {
        e.is_provisioned_throughput_exceeded_exception()
            || e.is_request_limit_exceeded()
            || e.is_throttling_exception()
    })
}

/// Whether a batch may or may not have been written: no answer, a broken
/// connection, a server error.
fn outcome_unknown<E>(err: &aws_sdk_dynamodb::error::SdkError<E>) -> bool {
    use aws_sdk_dynamodb::error::SdkError;
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(e) => e.raw().status().is_server_error(),
        _ => false,
    }
}
