//! `taskctl recount`, the repair tool of the counters: it counts a step's
//! index partitions, shard by shard (never the whole table), and corrects
//! each shard's counter item with a write conditioned on the item as it
//! was read, again while tasks keep moving.

use std::collections::HashMap;

use super::errors::{is_condition_failed, is_retryable};
use super::expr::Counter;
use super::report::expired_slot;
use super::{DynamoStore, Item, n, number, s};
use crate::model::{StepMeta, TaskState};
use crate::schema::{self, attr};
use crate::store::{Correction, StoreError};
use crate::time::Timestamp;
use crate::transition::counter_of;

/// Tries to correct one shard's counters while tasks keep moving.
const RECOUNT_TRIES: u32 = 5;

impl DynamoStore {
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
