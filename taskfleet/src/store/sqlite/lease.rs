//! Claim, renewal and end in the embedded store: each one `BEGIN
//! IMMEDIATE` transaction that reads, checks the transition's guard and
//! writes, so two agents sharing the file cannot both win a task, and an
//! owner's write after its lease was taken over is refused.

use rusqlite::params;

use super::{SqliteStore, apply, deps, q, read_task};
use crate::model::{StepMeta, Task, TaskState};
use crate::store::{Candidate, Claim, Fence, Finish, Order, StoreError};
use crate::time::Timestamp;
use crate::transition::{self, Transition};

impl SqliteStore {
    pub(super) async fn candidates_in(
        &self,
        meta: &StepMeta,
        shard: u16,
        state: TaskState,
        now: Timestamp,
        limit: usize,
        order: Order,
    ) -> Result<Vec<Candidate>, StoreError> {
        let cutoff = transition::claimable_by(state, now).as_millis();
        let step = meta.step.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let from = match order {
            Order::OldestFrom(from) => from.as_millis(),
            Order::OldestFirst | Order::NewestFirst => i64::MIN,
        };
        self.tx(move |tx| {
            let mut stmt = tx
                .prepare_cached(match order {
                    Order::OldestFirst | Order::OldestFrom(_) => {
                        "SELECT task_id, attempt, state_at FROM tasks
                         WHERE step = ?1 AND state = ?2 AND shard = ?5 AND state_at <= ?3
                           AND state_at >= ?6
                         ORDER BY state_at, task_id LIMIT ?4"
                    }
                    Order::NewestFirst => {
                        "SELECT task_id, attempt, state_at FROM tasks
                         WHERE step = ?1 AND state = ?2 AND shard = ?5 AND state_at <= ?3
                           AND state_at >= ?6
                         ORDER BY state_at DESC, task_id DESC LIMIT ?4"
                    }
                })
                .map_err(q)?;
            let rows = stmt
                .query_map(
                    params![step, state.as_str(), cutoff, limit, shard, from],
                    |r| {
                        Ok(Candidate {
                            task_id: r.get(0)?,
                            state,
                            attempt: r.get(1)?,
                            state_at: Timestamp::from_millis(r.get(2)?),
                        })
                    },
                )
                .map_err(q)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(q)
        })
        .await
    }

    pub(super) async fn claim_task(
        &self,
        meta: &StepMeta,
        candidate: &Candidate,
        owner: &str,
        now: Timestamp,
    ) -> Result<Claim, StoreError> {
        let (meta, candidate, owner) = (meta.clone(), candidate.clone(), owner.to_owned());
        self.tx(move |tx| {
            if candidate.state == TaskState::Pending {
                let t = transition::claim(&owner, now, meta.settings.lease);
                return Ok(match apply(tx, &meta, &candidate.task_id, &t)? {
                    Some(task) => Claim::Claimed(Box::new(task)),
                    None => Claim::Lost,
                });
            }
            let Some(old) = read_task(tx, &meta.step, &candidate.task_id)? else {
                return Ok(Claim::Lost);
            };
            if old.attempt != candidate.attempt {
                return Ok(Claim::Lost);
            }
            reclaim_in(tx, &meta, &old, &owner, now)
        })
        .await
    }

    pub(super) async fn reclaim_task(
        &self,
        meta: &StepMeta,
        old: &Task,
        owner: &str,
        now: Timestamp,
    ) -> Result<Claim, StoreError> {
        let (meta, old, owner) = (meta.clone(), old.clone(), owner.to_owned());
        self.tx(move |tx| reclaim_in(tx, &meta, &old, &owner, now))
            .await
    }

    pub(super) async fn heartbeat_task(
        &self,
        meta: &StepMeta,
        task: &Task,
        until: Timestamp,
    ) -> Result<Fence, StoreError> {
        let t = transition::heartbeat(task, until, Timestamp::now());
        self.fenced_write(meta, task, t).await
    }

    pub(super) async fn finish_task(
        &self,
        meta: &StepMeta,
        task: &Task,
        finish: &Finish,
    ) -> Result<Fence, StoreError> {
        let (meta, task, finish) = (meta.clone(), task.clone(), finish.clone());
        self.tx(move |tx| {
            let make = |t: &Task| transition::finish(t, &finish);
            Ok(match deps::end_in(tx, &meta, &task, &make)? {
                Some(_) => Fence::Held,
                None => lost_or_cancelled(tx, &meta, &task)?,
            })
        })
        .await
    }

    async fn fenced_write(
        &self,
        meta: &StepMeta,
        task: &Task,
        t: Transition,
    ) -> Result<Fence, StoreError> {
        let (meta, id) = (meta.clone(), task.task_id.clone());
        let task = task.clone();
        self.tx(move |tx| {
            Ok(match apply(tx, &meta, &id, &t)? {
                Some(_) => Fence::Held,
                None => lost_or_cancelled(tx, &meta, &task)?,
            })
        })
        .await
    }
}

/// Why a fenced write on `held` did not happen: the task is gone from its
/// owner, or an operator cancelled it.
fn lost_or_cancelled(
    tx: &rusqlite::Transaction<'_>,
    meta: &StepMeta,
    held: &Task,
) -> Result<Fence, StoreError> {
    let stored = read_task(tx, &meta.step, &held.task_id)?;
    Ok(if transition::cancel_asked(held, stored.as_ref()) {
        Fence::Cancelled
    } else {
        Fence::Lost
    })
}

/// The reclaim of `old`, inside a transaction.
fn reclaim_in(
    tx: &rusqlite::Transaction<'_>,
    meta: &StepMeta,
    old: &Task,
    owner: &str,
    now: Timestamp,
) -> Result<Claim, StoreError> {
    let make = |t: &Task| transition::reclaim(t, owner, now, meta.settings.lease, &meta.settings);
    Ok(match deps::end_in(tx, meta, old, &make)? {
        Some(task) if task.state == TaskState::Running => Claim::Claimed(Box::new(task)),
        Some(_) => Claim::FailedLost,
        None => Claim::Lost,
    })
}
