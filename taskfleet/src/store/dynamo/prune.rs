//! Pruning finished tasks on DynamoDB (`taskctl prune`): a page of old
//! `done` tasks of one shard from the `by_state` index (its sort key is the
//! finish time), read whole with a batch read, then removed in
//! transactions that carry the shard's counter update: a task that changed
//! since it was read fails its guard, is left alone, and the rest are
//! written again. The counters are exact after every transaction.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};

use super::expr::{counter_item, delete_in_transaction, deltas_of, sum_deltas};
use super::{DynamoStore, Item, decode, n, number, s};
use crate::model::{StepMeta, Task, TaskState};
use crate::schema::{self, attr};
use crate::store::{PruneCursor, StoreError};
use crate::time::Timestamp;
use crate::transition;

/// Tasks one prune transaction removes (with their shard's counter item,
/// within a transaction's 100 items).
const PER_TRANSACTION: usize = 50;

impl DynamoStore {
    pub(super) async fn in_state_of(
        &self,
        meta: &StepMeta,
        shard: u16,
        state: TaskState,
        before: Timestamp,
        after: Option<&PruneCursor>,
        limit: usize,
    ) -> Result<(Vec<Task>, Option<PruneCursor>), StoreError> {
        let spk = schema::state_pk(&meta.step, state, shard);
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(schema::BY_STATE_INDEX)
            .key_condition_expression("#spk = :spk AND #at < :before")
            .expression_attribute_names("#spk", attr::STATE_PK)
            .expression_attribute_names("#at", attr::STATE_AT)
            .expression_attribute_values(":spk", s(&spk))
            .expression_attribute_values(":before", n(before.as_millis()))
            .limit(i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000));
        if let Some((at, id)) = after {
            query = query
                .exclusive_start_key(attr::STATE_PK, s(&spk))
                .exclusive_start_key(attr::STATE_AT, n(at.as_millis()))
                .exclusive_start_key(attr::PK, s(&schema::task_pk(&meta.step, shard)))
                .exclusive_start_key(attr::SK, s(id));
        }
        let out = query.send().await.map_err(|e| self.classify("Query", &e))?;
        let keys: Vec<Item> = out
            .items()
            .iter()
            .filter_map(|i| {
                Some(HashMap::from([
                    (attr::PK.to_owned(), i.get(attr::PK)?.clone()),
                    (attr::SK.to_owned(), i.get(attr::SK)?.clone()),
                ]))
            })
            .collect();
        let next = out.last_evaluated_key().and_then(|k| {
            let at = k.get(attr::STATE_AT)?.as_n().ok()?.parse::<i64>().ok()?;
            let id = k.get(attr::SK)?.as_s().ok()?.clone();
            Some((Timestamp::from_millis(at), id))
        });
        let mut tasks = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(100) {
            for item in self.batch_get(chunk.to_vec(), &[]).await? {
                let id = match item.get(attr::SK) {
                    Some(AttributeValue::S(id)) => id.clone(),
                    _ => String::new(),
                };
                tasks.push(decode::<Task>(&id, item)?);
            }
        }
        // The index lags the table: only what is still in that state now.
        tasks.retain(|t| t.state == state);
        tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        Ok((tasks, next))
    }

    /// The remains of a step whose tasks are gone: its counter items (each
    /// only while it counts no task), its load records, then the step.
    pub(super) async fn remove_step_of(&self, meta: &StepMeta) -> Result<(), StoreError> {
        let counters = self.counter_items(&meta.step).await?;
        let now = Timestamp::now();
        // Tasks a shard still counts (expired ones are gone; a drifted
        // counter counts too: `recount` first), checked before anything is
        // removed.
        let loaded_of =
            |c: &Item| number(c, attr::LOADED).unwrap_or(0) - super::report::expired_in(c, now);
        let loaded: i64 = counters.iter().map(loaded_of).filter(|n| *n > 0).sum();
        if loaded > 0 {
            return Err(crate::store::prune_not_empty(
                &meta.step,
                loaded.unsigned_abs(),
            ));
        }
        for item in &counters {
            let (Some(pk), Some(sk)) = (item.get(attr::PK), item.get(attr::SK)) else {
                continue;
            };
            // Removed only as read: a task loaded or finished since changes
            // it. (A shard whose expired tasks are all that is left still
            // counts them in `loaded`.)
            let was = number(item, attr::LOADED).unwrap_or(0);
            let mut delete = self
                .client
                .delete_item()
                .table_name(&self.table)
                .key(attr::PK, pk.clone())
                .key(attr::SK, sk.clone())
                .expression_attribute_names("#loaded", attr::LOADED);
            delete = if was == 0 {
                delete
                    .condition_expression("attribute_not_exists(#loaded) OR #loaded <= :zero")
                    .expression_attribute_values(":zero", n(0))
            } else {
                delete
                    .condition_expression("#loaded = :was")
                    .expression_attribute_values(":was", n(was))
            };
            let out = delete.send().await;
            match out {
                Ok(_) => {}
                Err(e) if super::errors::is_condition_failed(&e) => {
                    return Err(crate::store::prune_not_empty(&meta.step, 1));
                }
                Err(e) => return Err(self.classify("DeleteItem", &e)),
            }
        }
        let loads: Vec<Item> = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_values(":pk", s(&schema::loads_pk(&meta.step)))
            .projection_expression("#pk, sk")
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.classify("Query", &e))?;
        for key in loads {
            self.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key))
                .send()
                .await
                .map_err(|e| self.classify("DeleteItem", &e))?;
        }
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(attr::PK, s(schema::STEPS_PK))
            .key(attr::SK, s(&meta.step))
            .send()
            .await
            .map_err(|e| self.classify("DeleteItem", &e))?;
        Ok(())
    }

    pub(super) async fn prune_tasks(
        &self,
        meta: &StepMeta,
        tasks: &[Task],
    ) -> Result<usize, StoreError> {
        let mut by_shard: HashMap<u16, Vec<&Task>> = HashMap::new();
        for t in tasks {
            by_shard
                .entry(schema::shard_of(&t.task_id, meta.shards))
                .or_default()
                .push(t);
        }
        let mut removed = 0;
        for (shard, tasks) in by_shard {
            for chunk in tasks.chunks(PER_TRANSACTION) {
                let mut left: Vec<&Task> = chunk.to_vec();
                while !left.is_empty() {
                    let transitions: Vec<_> = left.iter().map(|t| transition::prune(t)).collect();
                    let mut items: Vec<TransactWriteItem> = left
                        .iter()
                        .zip(&transitions)
                        .map(|(t, tr)| {
                            TransactWriteItem::builder()
                                .delete(delete_in_transaction(&self.table, meta, &t.task_id, tr))
                                .build()
                        })
                        .collect();
                    let deltas: Vec<_> = transitions.iter().flat_map(deltas_of).collect();
                    items.push(counter_item(
                        &self.table,
                        &meta.step,
                        shard,
                        &sum_deltas(deltas),
                    ));
                    let failed = self.transact(items).await?;
                    if failed.is_empty() {
                        removed += left.len();
                        break;
                    }
                    // Changed since read (retried, re-run, linked): left alone.
                    let mut i = 0;
                    left.retain(|_| {
                        i += 1;
                        !failed.contains(&(i - 1))
                    });
                }
            }
        }
        Ok(removed)
    }
}
