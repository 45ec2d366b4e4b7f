//! Claim, reclaim, heartbeat and finish: the writes that move a task
//! through its attempts, each one transition rendered as one conditional
//! request.
//!
//! - A claim is one `UpdateItem` returning the claimed item.
//! - A reclaim reads the dead attempt (to record it), then writes it with a
//!   guard that includes "the lease is still expired".
//! - Heartbeats and finishes are fenced on (running, owner, attempt); a
//!   finish that changes a counter is one `TransactWriteItems` with it.
//! - A request in conflict with another transaction is repeated a few
//!   times; callers bound the whole call with their own deadline.

use aws_sdk_dynamodb::types::{ReturnValue, TransactWriteItem};
use aws_smithy_types::error::display::DisplayErrorContext;

use super::errors::{
    Reason, cancellation_reasons, is_condition_failed, is_retryable, is_throttled_transaction,
    reason_kind,
};
use super::expr::{counter_item, deltas_of, render_update, sum_deltas, update_in_transaction};
use super::{DynamoStore, Item, decode, n, s};
use crate::model::{StepMeta, Task, TaskState};
use crate::schema::{self, BY_STATE_INDEX, attr};
use crate::store::{Candidate, Claim, Fence, Finish, Order, StoreError, reclaim_cutoff};
use crate::time::Timestamp;
use crate::transition::{self, Transition};

/// Tries of one write that conflicts with a transaction in progress.
const CONFLICT_TRIES: u32 = 4;

/// What one rendered transition did.
pub(super) enum Applied {
    /// The guard held; the item as written (when asked for).
    Written(Option<Item>),
    /// The guard did not hold: nothing was written.
    GuardFailed,
}

impl DynamoStore {
    /// One task of a step whose layout is known (one strongly consistent
    /// GetItem).
    pub(super) async fn read_task(
        &self,
        meta: &StepMeta,
        task_id: &str,
    ) -> Result<Option<Task>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(schema::task_key(&meta.step, meta.shards, task_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.classify("GetItem", &e))?;
        out.item()
            .map(|i| decode(&format!("{}/{task_id}", meta.step), i.clone()))
            .transpose()
    }

    /// Renders `t` on task `task_id`: one `UpdateItem` when no counter
    /// changes (returning the new item if `return_new`), else one
    /// `TransactWriteItems` with the counter update.
    pub(super) async fn apply(
        &self,
        meta: &StepMeta,
        task_id: &str,
        t: &Transition,
        return_new: bool,
    ) -> Result<Applied, StoreError> {
        let counters = sum_deltas(deltas_of(t));
        let mut tries = 0;
        loop {
            tries += 1;
            let retry = if counters.is_empty() {
                let e = render_update(meta, task_id, t);
                let mut request = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(schema::task_key(&meta.step, meta.shards, task_id)))
                    .update_expression(e.update_expression())
                    .condition_expression(e.condition_expression())
                    .set_expression_attribute_names(Some(e.names))
                    .set_expression_attribute_values(Some(e.values));
                if return_new {
                    request = request.return_values(ReturnValue::AllNew);
                }
                match request.send().await {
                    Ok(out) => return Ok(Applied::Written(out.attributes().cloned())),
                    Err(err) if is_condition_failed(&err) => return Ok(Applied::GuardFailed),
                    Err(err) if is_retryable(&err) && tries < CONFLICT_TRIES => {
                        DisplayErrorContext(&err).to_string()
                    }
                    Err(err) => return Err(self.classify("UpdateItem", &err)),
                }
            } else {
                let shard = schema::shard_of(task_id, meta.shards);
                let items = vec![
                    TransactWriteItem::builder()
                        .update(update_in_transaction(&self.table, meta, task_id, t))
                        .build(),
                    counter_item(&self.table, &meta.step, shard, &counters),
                ];
                match self
                    .client
                    .transact_write_items()
                    .set_transact_items(Some(items))
                    .send()
                    .await
                {
                    Ok(_) => return Ok(Applied::Written(None)),
                    Err(err) => {
                        let kinds: Vec<Reason> = cancellation_reasons(&err)
                            .unwrap_or_default()
                            .iter()
                            .map(reason_kind)
                            .collect();
                        if kinds.first() == Some(&Reason::ConditionFailed) {
                            return Ok(Applied::GuardFailed);
                        }
                        let again =
                            is_throttled_transaction(&err) || kinds.contains(&Reason::Retry);
                        if !again || tries >= CONFLICT_TRIES || kinds.contains(&Reason::Other) {
                            return Err(self.classify("TransactWriteItems", &err));
                        }
                        DisplayErrorContext(&err).to_string()
                    }
                }
            };
            tracing::debug!(transition = t.name, tries, error = %retry, "write repeated");
            tokio::time::sleep(self.retry.delay(tries - 1)).await;
        }
    }

    pub(super) async fn candidates_of(
        &self,
        meta: &StepMeta,
        shard: u16,
        state: TaskState,
        now: Timestamp,
        limit: usize,
        order: Order,
    ) -> Result<Vec<Candidate>, StoreError> {
        let cutoff = crate::transition::claimable_by(state, now);
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_STATE_INDEX)
            .expression_attribute_names("#spk", attr::STATE_PK)
            .expression_attribute_names("#sat", attr::STATE_AT)
            .expression_attribute_values(":spk", s(&schema::state_pk(&meta.step, state, shard)))
            .expression_attribute_values(":cutoff", n(cutoff.as_millis()))
            .limit(i32::try_from(limit).unwrap_or(i32::MAX).max(1))
            .scan_index_forward(order != Order::NewestFirst);
        let query = match order {
            Order::OldestFrom(from) if from > cutoff => return Ok(Vec::new()),
            Order::OldestFrom(from) => query
                .key_condition_expression("#spk = :spk AND #sat BETWEEN :from AND :cutoff")
                .expression_attribute_values(":from", n(from.as_millis())),
            Order::OldestFirst | Order::NewestFirst => {
                query.key_condition_expression("#spk = :spk AND #sat <= :cutoff")
            }
        };
        let out = query.send().await.map_err(|e| self.classify("Query", &e))?;
        Ok(out
            .items()
            .iter()
            .filter_map(|i| {
                Some(Candidate {
                    task_id: i.get(attr::SK)?.as_s().ok()?.clone(),
                    state,
                    attempt: i.get(attr::ATTEMPT)?.as_n().ok()?.parse().ok()?,
                    state_at: Timestamp::from_millis(
                        i.get(attr::STATE_AT)?.as_n().ok()?.parse().ok()?,
                    ),
                })
            })
            .collect())
    }

    pub(super) async fn claim_task(
        &self,
        meta: &StepMeta,
        candidate: &Candidate,
        owner: &str,
        now: Timestamp,
    ) -> Result<Claim, StoreError> {
        if candidate.state == TaskState::Running {
            // Reclaiming a dead owner's task: read it whole to record the
            // lost attempt.
            let Some(old) = self.read_task(meta, &candidate.task_id).await? else {
                return Ok(Claim::Lost);
            };
            if old.state != TaskState::Running
                || old.attempt != candidate.attempt
                || old
                    .lease_expires_at
                    .is_none_or(|l| l >= reclaim_cutoff(now))
            {
                return Ok(Claim::Lost);
            }
            return self.reclaim_task(meta, &old, owner, now).await;
        }
        let t = transition::claim(owner, now, meta.settings.lease);
        self.claimed(meta, &candidate.task_id, &t).await
    }

    pub(super) async fn reclaim_task(
        &self,
        meta: &StepMeta,
        old: &Task,
        owner: &str,
        now: Timestamp,
    ) -> Result<Claim, StoreError> {
        let make =
            |t: &Task| transition::reclaim(t, owner, now, meta.settings.lease, &meta.settings);
        let t = make(old);
        if t.to != TaskState::Running {
            // It ends (failed, or cancelled as asked): its dependents
            // follow.
            return Ok(if self.end_write(meta, old, &make).await? {
                Claim::FailedLost
            } else {
                Claim::Lost
            });
        }
        self.claimed(meta, &old.task_id, &t).await
    }

    async fn claimed(
        &self,
        meta: &StepMeta,
        id: &str,
        t: &Transition,
    ) -> Result<Claim, StoreError> {
        match self.apply(meta, id, t, true).await? {
            Applied::Written(item) => {
                let task: Task = decode(&format!("{}/{id}", meta.step), item.unwrap_or_default())?;
                Ok(Claim::Claimed(Box::new(task)))
            }
            Applied::GuardFailed => Ok(Claim::Lost),
        }
    }

    pub(super) async fn heartbeat_task(
        &self,
        meta: &StepMeta,
        task: &Task,
        until: Timestamp,
    ) -> Result<Fence, StoreError> {
        let t = transition::heartbeat(task, until, Timestamp::now());
        self.fenced(meta, task, &t).await
    }

    pub(super) async fn finish_task(
        &self,
        meta: &StepMeta,
        task: &Task,
        finish: &Finish,
    ) -> Result<Fence, StoreError> {
        let make = |t: &Task| transition::finish(t, finish);
        if self.end_write(meta, task, &make).await? {
            return Ok(Fence::Held);
        }
        self.lost_or_cancelled(meta, task).await
    }

    async fn fenced(
        &self,
        meta: &StepMeta,
        task: &Task,
        t: &Transition,
    ) -> Result<Fence, StoreError> {
        match self.apply(meta, &task.task_id, t, false).await? {
            Applied::Written(_) => Ok(Fence::Held),
            Applied::GuardFailed => self.lost_or_cancelled(meta, task).await,
        }
    }

    /// Why a fenced write on `held` did not happen: the task is gone from
    /// its owner, or an operator cancelled it (one read, only when a fence
    /// fails).
    async fn lost_or_cancelled(&self, meta: &StepMeta, held: &Task) -> Result<Fence, StoreError> {
        let stored = self.read_task(meta, &held.task_id).await?;
        Ok(if transition::cancel_asked(held, stored.as_ref()) {
            Fence::Cancelled
        } else {
            Fence::Lost
        })
    }
}
