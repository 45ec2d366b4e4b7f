//! Dependent tasks (`load --after`) on DynamoDB: the plan of what a write
//! carries to the dependents is the shared one
//! ([`crate::transition::deps`]); here it is read with strongly consistent
//! reads and written as one `TransactWriteItems`, every task guarded on
//! what was read. A guard that fails means something changed since: read
//! again and plan again, a bounded number of times.
//!
//! - An end write (done, failed) or a put-back from failed is guarded on
//!   the task's own fence and its `dependents` as read. A load that linked
//!   a new dependent meanwhile makes it fail; the task is read again and,
//!   if it is still the caller's, written with the new dependent included.
//! - A load `--after` writes each new task together with the link on each
//!   upstream task (guarded on its state, attempt and dependents as read),
//!   or a check that the upstream task still does not exist.

use std::collections::BTreeMap;

use aws_sdk_dynamodb::types::{ConditionCheck, TransactWriteItem};
use aws_smithy_types::error::display::DisplayErrorContext;

use super::errors::{Reason, cancellation_reasons, is_throttled_transaction, reason_kind};
use super::expr::{
    Counter, check_in_transaction, counter_item, deltas_of, put_in_transaction, step_absent,
    step_unchanged, sum_deltas, update_in_transaction,
};
use super::lease::Applied;
use super::{DynamoStore, decode};
use crate::model::{StepMeta, Task, TaskState};
use crate::schema::{self, MAX_TRANSACTION_ITEMS, attr};
use crate::store::{InsertOutcome, StoreError};
use crate::time::Timestamp;
use crate::transition::deps::{self, Cascade, MAX_CASCADE};
use crate::transition::{self, Transition};

/// The layout each step of a plan was read by (`None`: no such step).
type Layouts = BTreeMap<String, Option<StepMeta>>;

/// Plans made again before an end write gives up (every one of them lost
/// to a change of a dependent or of the task's dependents).
const PLAN_TRIES: u32 = 8;

/// Most tasks one load transaction writes with their links.
const TASKS_PER_TRANSACTION: usize = 24;

impl DynamoStore {
    /// The stored step `step` for its key layout, read once per store.
    async fn layout(&self, step: &str) -> Result<Option<StepMeta>, StoreError> {
        if let Some(meta) = self
            .layouts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(step)
        {
            return Ok(Some(meta.clone()));
        }
        let Some(meta) = crate::store::TaskStore::step(self, step).await? else {
            return Ok(None);
        };
        self.layouts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(step.to_owned(), meta.clone());
        Ok(Some(meta))
    }

    /// Writes `make(base)` on `base`'s task (as the caller holds it) and
    /// what it carries to the task's dependents. `false` when the task is
    /// no longer as the caller holds it (the guard of `make` fails on it).
    pub(super) async fn end_write(
        &self,
        meta: &StepMeta,
        base: &Task,
        make: &(dyn Fn(&Task) -> Transition + Sync),
    ) -> Result<bool, StoreError> {
        let mut base = base.clone();
        for _ in 0..PLAN_TRIES {
            let mut own = make(&base);
            if !crate::transition::escalate::needs_plan(base.state, &own) {
                return Ok(matches!(
                    self.apply(meta, &base.task_id, &own, false).await?,
                    Applied::Written(_)
                ));
            }
            if own.to == TaskState::Cancelled && base.cancelled_by.is_none() {
                // The owner's copy predates the ask; who asked (for the
                // dependents' cancel) is in the table.
                let Some(current) = self.read_task(meta, &base.task_id).await? else {
                    return Ok(false);
                };
                deps::rebase(&mut base, &current);
                own = make(&base);
            }
            let mut cascade = Cascade::new(&base, own, Timestamp::now());
            let layouts = self.plan(&mut cascade).await?;
            if let Some(err) = cascade.overflow() {
                return Err(err);
            }
            match self.write_planned(meta, &cascade, &layouts).await? {
                None => return Ok(true),
                // The task itself changed: still the caller's, with other
                // dependents? Then again with those.
                Some(0) => {
                    let Some(current) = self.read_task(meta, &base.task_id).await? else {
                        return Ok(false);
                    };
                    deps::rebase(&mut base, &current);
                    if !make(&base).allows(Some(&current)) {
                        return Ok(false);
                    }
                }
                // A dependent changed, or the layout of its step: plan
                // again.
                Some(_) => {}
            }
        }
        Err(StoreError::Service {
            operation: "ending a task with dependents",
            message: format!(
                "{}/{}: its dependent tasks kept changing while it was written; run the command again",
                meta.step, base.task_id
            ),
        })
    }

    /// Reads what `cascade` wants until its plan is complete. Returns the
    /// layout each step was read by (`None`: no such step), the first one
    /// read, which the write must check is still the stored one.
    async fn plan(&self, cascade: &mut Cascade) -> Result<Layouts, StoreError> {
        let mut layouts = Layouts::new();
        loop {
            let wanted = cascade.wanted();
            if wanted.is_empty() {
                return Ok(layouts);
            }
            let mut read = Vec::with_capacity(wanted.len());
            for (step, id) in &wanted {
                if !layouts.contains_key(step) {
                    let m = self.layout(step).await?;
                    layouts.insert(step.clone(), m);
                }
                read.push(match &layouts[step] {
                    Some(m) => self.read_task(m, id).await?,
                    None => None,
                });
            }
            cascade.feed(&read);
        }
    }

    /// Forgets the layout of `step`, read again when next needed.
    fn forget_layout(&self, step: &str) {
        self.layouts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(step);
    }

    /// Writes what `cascade` planned (the first write on a task of
    /// `meta`, the others on steps of `layouts`) and their counters in one
    /// transaction, which holds only while every task the plan read and
    /// writes nothing to is as read, and every step of `layouts` is as
    /// read. `Some(0)`: the own task changed; `Some(_)`: something else
    /// did (a step's layout is then forgotten); nothing was written.
    async fn write_planned(
        &self,
        meta: &StepMeta,
        cascade: &Cascade,
        layouts: &Layouts,
    ) -> Result<Option<usize>, StoreError> {
        let writes = cascade.writes();
        let mut items = Vec::with_capacity(2 * writes.len() + layouts.len());
        let mut counters: BTreeMap<(String, u16), Vec<(Counter, i64)>> = BTreeMap::new();
        for (i, p) in writes.iter().enumerate() {
            let m = if i == 0 {
                meta.clone()
            } else {
                layouts
                    .get(&p.step)
                    .cloned()
                    .flatten()
                    .ok_or_else(|| StoreError::Service {
                        operation: "ending a task with dependents",
                        message: format!(
                            "step {} of a dependent or escalated task does not exist; load it (or fix the step's retry rules)",
                            p.step
                        ),
                    })?
            };
            let mut t = p.transition.clone();
            transition::escalate::with_step_expiry(&mut t, &m.settings);
            let item = TransactWriteItem::builder();
            items.push(
                match t.write {
                    // An escalated run's new task.
                    transition::Write::Put(_) => item.put(put_in_transaction(&self.table, &m, &t)),
                    transition::Write::Delete => unreachable!("a cascade never deletes"),
                    transition::Write::Update(_) => {
                        item.update(update_in_transaction(&self.table, &m, &p.task_id, &t))
                    }
                }
                .build(),
            );
            counters
                .entry((p.step.clone(), schema::shard_of(&p.task_id, m.shards)))
                .or_default()
                .extend(deltas_of(&t));
        }
        // Tasks read as missing, or needing nothing: a load that puts one
        // there meanwhile starts it from this task as it was read (before
        // this write), so this write must fail and be planned again.
        for read in cascade.checks() {
            // A step read as missing is checked as a whole, below.
            if let Some(Some(m)) = layouts.get(&read.step) {
                let check = check_in_transaction(&self.table, m, &read.task_id, &read.guard);
                items.push(TransactWriteItem::builder().condition_check(check).build());
            }
        }
        let first_step_check = items.len();
        let checked: Vec<&str> = layouts
            .keys()
            .map(String::as_str)
            .filter(|&step| step != meta.step)
            .collect();
        for step in &checked {
            let check = match &layouts[*step] {
                Some(m) => step_unchanged(&self.table, m),
                None => step_absent(&self.table, step),
            };
            items.push(TransactWriteItem::builder().condition_check(check).build());
        }
        for ((step, shard), deltas) in counters {
            let deltas = sum_deltas(deltas);
            if !deltas.is_empty() {
                items.push(counter_item(&self.table, &step, shard, &deltas));
            }
        }
        if items.len() > MAX_TRANSACTION_ITEMS {
            return Err(StoreError::Service {
                operation: "ending a task with dependents",
                message: format!(
                    "{}/{}: what its end does to the {} tasks after it, with their counters and the checks of what was read, is {} items, more than one write can carry ({MAX_TRANSACTION_ITEMS}); load fewer steps after one another (--after), at most {MAX_CASCADE} down a chain",
                    meta.step,
                    writes[0].task_id,
                    writes.len() - 1,
                    items.len()
                ),
            });
        }
        let failed = self.transact(items).await?;
        for step in failed
            .iter()
            .filter_map(|i| i.checked_sub(first_step_check))
            .filter_map(|c| checked.get(c))
        {
            self.forget_layout(step);
        }
        Ok(failed.first().copied())
    }

    /// One transaction, repeated while it conflicts with another one or is
    /// throttled. Returns the items whose condition failed (none: written).
    pub(super) async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<Vec<usize>, StoreError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let Err(err) = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await
            else {
                return Ok(Vec::new());
            };
            let kinds: Vec<Reason> = cancellation_reasons(&err)
                .unwrap_or_default()
                .iter()
                .map(reason_kind)
                .collect();
            let failed: Vec<usize> = (0..kinds.len())
                .filter(|&i| kinds[i] == Reason::ConditionFailed)
                .collect();
            if !failed.is_empty() {
                return Ok(failed);
            }
            let again = is_throttled_transaction(&err) || kinds.contains(&Reason::Retry);
            if !again || kinds.contains(&Reason::Other) {
                return Err(self.classify("TransactWriteItems", &err));
            }
            tracing::debug!(tries, error = %DisplayErrorContext(&err), "transaction repeated");
            self.backoff("TransactWriteItems", tries, items.len())
                .await?;
        }
    }

    /// `load --after`: inserts `tasks` (one shard of `meta`), each as its
    /// upstream tasks say and linked to them in the same transaction.
    pub(super) async fn insert_after_tasks(
        &self,
        meta: &StepMeta,
        tasks: &[Task],
        after: &[String],
    ) -> Result<InsertOutcome, StoreError> {
        let mut metas = Vec::with_capacity(after.len());
        for step in after {
            metas.push((step.clone(), self.layout(step).await?));
        }
        let mut out = InsertOutcome::default();
        // Each task is its put and an item per upstream step; with the
        // counter update and a check per upstream step, within a
        // transaction's items and bytes.
        let by_items = MAX_TRANSACTION_ITEMS.saturating_sub(1 + after.len()) / (1 + after.len());
        if by_items == 0 {
            return Err(StoreError::Service {
                operation: "load --after",
                message: format!(
                    "{} waits for {} steps; a task can wait for at most {}: load it after fewer steps",
                    meta.step,
                    after.len(),
                    deps::MAX_AFTER
                ),
            });
        }
        let largest = tasks
            .iter()
            .map(|t| schema::item_size(&super::task_item(meta, t, transition::load_place(t))))
            .max()
            .unwrap_or(1)
            .max(1);
        let by_bytes = (schema::MAX_TRANSACTION_BYTES / largest).max(1);
        let per = TASKS_PER_TRANSACTION.min(by_items).min(by_bytes).max(1);
        for chunk in tasks.chunks(per) {
            let mut remaining: Vec<Task> = chunk.to_vec();
            let mut tries = 0;
            while !remaining.is_empty() {
                tries += 1;
                if tries > PLAN_TRIES {
                    return Err(StoreError::Service {
                        operation: "load --after",
                        message: format!(
                            "the upstream tasks of {} kept changing while it was loaded; load again",
                            remaining[0].task_id
                        ),
                    });
                }
                let upstream = self.read_upstream(&metas, &remaining).await?;
                let (items, owners) = self.insert_items(meta, &metas, &remaining, &upstream);
                let failed = self.transact(items).await?;
                if failed.is_empty() {
                    out.inserted += remaining.len();
                    break;
                }
                // An upstream step made again or changed: read it again.
                for &i in &failed {
                    if let Owner::Step(s) = owners[i] {
                        let step = &after[s];
                        self.forget_layout(step);
                        metas[s] = (step.clone(), self.layout(step).await?);
                    }
                }
                // Tasks that exist leave the batch as stored; if only
                // upstream tasks changed, they are read again.
                let mut existing: Vec<usize> = failed
                    .iter()
                    .filter_map(|&i| match owners[i] {
                        Owner::Put(t) => Some(t),
                        _ => None,
                    })
                    .collect();
                if !existing.is_empty() {
                    tries -= 1;
                }
                existing.sort_unstable();
                for &t in existing.iter().rev() {
                    let id = remaining.remove(t).task_id;
                    out.existing.extend(self.read_task(meta, &id).await?);
                }
            }
        }
        Ok(out)
    }

    /// The upstream tasks of `tasks`, per task in the order of `metas`.
    async fn read_upstream(
        &self,
        metas: &[(String, Option<StepMeta>)],
        tasks: &[Task],
    ) -> Result<Vec<Vec<(String, Option<Task>)>>, StoreError> {
        let mut keys = Vec::new();
        for task in tasks {
            for (_, m) in metas {
                if let Some(m) = m {
                    keys.push(schema::task_key(&m.step, m.shards, &task.task_id));
                }
            }
        }
        let mut found: BTreeMap<(String, String), Task> = BTreeMap::new();
        for part in keys.chunks(100) {
            for item in self.batch_get(part.to_vec(), &[]).await? {
                let task: Task = decode("an upstream task", item)?;
                found.insert((task.step.clone(), task.task_id.clone()), task);
            }
        }
        Ok(tasks
            .iter()
            .map(|t| {
                metas
                    .iter()
                    .map(|(step, _)| {
                        let up = found.remove(&(step.clone(), t.task_id.clone()));
                        (step.clone(), up)
                    })
                    .collect()
            })
            .collect())
    }

    /// The transaction that inserts `tasks` with their links, and what
    /// each item is for.
    fn insert_items(
        &self,
        meta: &StepMeta,
        metas: &[(String, Option<StepMeta>)],
        tasks: &[Task],
        upstream: &[Vec<(String, Option<Task>)>],
    ) -> (Vec<TransactWriteItem>, Vec<Owner>) {
        let now = Timestamp::now();
        let mut items = Vec::new();
        let mut owners = Vec::new();
        let mut deltas = Vec::new();
        // The upstream tasks were read where these layouts put them, or
        // not read for want of their step.
        for (s, (step, up_meta)) in metas.iter().enumerate() {
            let check = match up_meta {
                Some(up_meta) => step_unchanged(&self.table, up_meta),
                None => step_absent(&self.table, step),
            };
            items.push(TransactWriteItem::builder().condition_check(check).build());
            owners.push(Owner::Step(s));
        }
        for (i, (task, ups)) in tasks.iter().zip(upstream).enumerate() {
            let mut task = task.clone();
            deps::start(&mut task, ups, now);
            let insert = transition::insert(&task);
            deltas.extend(deltas_of(&insert));
            items.push(
                TransactWriteItem::builder()
                    .put(put_in_transaction(&self.table, meta, &insert))
                    .build(),
            );
            owners.push(Owner::Put(i));
            for ((_, up), (_, up_meta)) in ups.iter().zip(metas) {
                let Some(up_meta) = up_meta else { continue };
                let item = match up {
                    Some(up) => match deps::link(up, &meta.step) {
                        Some(link) => TransactWriteItem::builder()
                            .update(update_in_transaction(
                                &self.table,
                                up_meta,
                                &up.task_id,
                                &link,
                            ))
                            .build(),
                        // Linked already (by a task of this id loaded
                        // before and removed): the task starts as the
                        // upstream task was read, so only while it still
                        // is so.
                        None => TransactWriteItem::builder()
                            .condition_check(check_in_transaction(
                                &self.table,
                                up_meta,
                                &up.task_id,
                                &deps::as_read(up),
                            ))
                            .build(),
                    },
                    // Not loaded yet: the insert holds only while it is not.
                    None => TransactWriteItem::builder()
                        .condition_check(
                            ConditionCheck::builder()
                                .table_name(&self.table)
                                .set_key(Some(schema::task_key(
                                    &up_meta.step,
                                    up_meta.shards,
                                    &task.task_id,
                                )))
                                .condition_expression("attribute_not_exists(#pk)")
                                .expression_attribute_names("#pk", attr::PK)
                                .build()
                                .expect("table, key and condition are set"),
                        )
                        .build(),
                };
                items.push(item);
                owners.push(Owner::Upstream);
            }
        }
        let shard = schema::shard_of(&tasks[0].task_id, meta.shards);
        items.push(counter_item(
            &self.table,
            &meta.step,
            shard,
            &sum_deltas(deltas),
        ));
        owners.push(Owner::Counter);
        (items, owners)
    }
}

/// What an item of a `load --after` transaction is for.
#[derive(Debug, Clone, Copy)]
enum Owner {
    /// The put of the batch's task at this index.
    Put(usize),
    /// A link on, or a check of, an upstream task.
    Upstream,
    /// The check of the upstream step at this index of `after`.
    Step(usize),
    /// The step's counters.
    Counter,
}
