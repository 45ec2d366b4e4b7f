//! Loading tasks: new tasks are inserted with conditional puts, never
//! overwriting a task that exists, and counted in the same transaction.
//!
//! A batch is one `TransactWriteItems`: a `Put` per task with the condition
//! "no such task" and one counter update adding what the puts add. So a
//! loader killed at any point, two loaders racing over the same sheet, or
//! an agent claiming meanwhile cannot reset a task or leave `loaded`
//! different from the number of tasks. Tasks that exist come back from the
//! cancelled transaction as stored (`ALL_OLD`), and the rest of the batch
//! is written again without them.

use aws_sdk_dynamodb::types::TransactWriteItem;
use aws_smithy_types::error::display::DisplayErrorContext;

use super::errors::{Reason, cancellation_reasons, is_throttled_transaction, reason_kind};
use super::expr::{counter_item, deltas_of, put_in_transaction, sum_deltas};
use super::{DynamoStore, decode, task_item};
use crate::model::{StepMeta, Task};
use crate::schema::{self, MAX_TRANSACTION_BYTES, MAX_TRANSACTION_ITEMS};
use crate::store::{InsertOutcome, ReplaceOutcome, StoreError};
use crate::time::Timestamp;
use crate::transition;

impl DynamoStore {
    pub(super) async fn insert_tasks(
        &self,
        meta: &StepMeta,
        tasks: &[Task],
    ) -> Result<InsertOutcome, StoreError> {
        let mut out = InsertOutcome::default();
        let Some(first) = tasks.first() else {
            return Ok(out);
        };
        let shard = schema::shard_of(&first.task_id, meta.shards);
        debug_assert!(
            tasks
                .iter()
                .all(|t| schema::shard_of(&t.task_id, meta.shards) == shard)
        );
        // Transactions are bounded in items (the counter update is one) and
        // in bytes.
        let mut start = 0;
        while start < tasks.len() {
            let mut bytes = 0;
            let mut end = start;
            while end < tasks.len() && end - start < MAX_TRANSACTION_ITEMS - 1 {
                let t = &tasks[end];
                let size = schema::item_size(&task_item(meta, t, transition::load_place(t)));
                if end > start && bytes + size > MAX_TRANSACTION_BYTES {
                    break;
                }
                bytes += size;
                end += 1;
            }
            let part = self
                .insert_transaction(meta, shard, &tasks[start..end])
                .await?;
            out.inserted += part.inserted;
            out.existing.extend(part.existing);
            start = end;
        }
        Ok(out)
    }

    async fn insert_transaction(
        &self,
        meta: &StepMeta,
        shard: u16,
        tasks: &[Task],
    ) -> Result<InsertOutcome, StoreError> {
        let mut out = InsertOutcome::default();
        let mut remaining: Vec<&Task> = tasks.iter().collect();
        let mut tries = 0;
        while !remaining.is_empty() {
            tries += 1;
            let inserts: Vec<_> = remaining.iter().map(|t| transition::insert(t)).collect();
            let deltas: Vec<_> = inserts.iter().flat_map(deltas_of).collect();
            let mut items: Vec<TransactWriteItem> = inserts
                .iter()
                .map(|t| {
                    TransactWriteItem::builder()
                        .put(put_in_transaction(&self.table, meta, t))
                        .build()
                })
                .collect();
            items.push(counter_item(
                &self.table,
                &meta.step,
                shard,
                &sum_deltas(deltas),
            ));
            let Err(err) = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await
            else {
                out.inserted += remaining.len();
                return Ok(out);
            };
            let Some(reasons) = cancellation_reasons(&err) else {
                if is_throttled_transaction(&err) {
                    tracing::debug!(tries, error = %DisplayErrorContext(&err), "insert repeated");
                    self.backoff("TransactWriteItems", tries, remaining.len())
                        .await?;
                    continue;
                }
                return Err(self.classify("TransactWriteItems", &err));
            };
            let kinds: Vec<Reason> = reasons.iter().map(reason_kind).collect();
            if kinds.contains(&Reason::Other) {
                return Err(self.classify("TransactWriteItems", &err));
            }
            // Tasks that exist leave the batch, as they are stored.
            let mut still = Vec::with_capacity(remaining.len());
            for (i, task) in remaining.into_iter().enumerate() {
                if kinds.get(i) != Some(&Reason::ConditionFailed) {
                    still.push(task);
                    continue;
                }
                let stored = match reasons[i].item() {
                    Some(item) => Some(decode(
                        &format!("{}/{}", meta.step, task.task_id),
                        item.clone(),
                    )?),
                    None => self.read_task(meta, &task.task_id).await?,
                };
                out.existing.extend(stored);
            }
            remaining = still;
            if kinds.contains(&Reason::Retry) {
                self.backoff("TransactWriteItems", tries, remaining.len())
                    .await?;
            }
        }
        Ok(out)
    }

    pub(super) async fn retry_task(
        &self,
        meta: &StepMeta,
        task_id: &str,
        attempt: u32,
        by: &str,
    ) -> Result<ReplaceOutcome, StoreError> {
        let Some(old) = self.read_task(meta, task_id).await? else {
            return Ok(ReplaceOutcome::Changed);
        };
        let make = |t: &Task| transition::retry(t, attempt, by, Timestamp::now());
        Ok(if self.end_write(meta, &old, &make).await? {
            ReplaceOutcome::Replaced
        } else {
            ReplaceOutcome::Changed
        })
    }

    pub(super) async fn cancel_task(
        &self,
        meta: &StepMeta,
        task: &Task,
        by: &str,
    ) -> Result<ReplaceOutcome, StoreError> {
        let now = Timestamp::now();
        if transition::cancel(task, by, now).is_none() {
            return Ok(ReplaceOutcome::Changed);
        }
        let make = |t: &Task| transition::cancel(t, by, now).expect("cancellable as read");
        Ok(if self.end_write(meta, task, &make).await? {
            ReplaceOutcome::Replaced
        } else {
            ReplaceOutcome::Changed
        })
    }

    pub(super) async fn replace_task(
        &self,
        meta: &StepMeta,
        old: &Task,
        new: &Task,
    ) -> Result<ReplaceOutcome, StoreError> {
        let make = |t: &Task| transition::replace(t, new, Timestamp::now());
        Ok(if self.end_write(meta, old, &make).await? {
            ReplaceOutcome::Replaced
        } else {
            ReplaceOutcome::Changed
        })
    }
}
