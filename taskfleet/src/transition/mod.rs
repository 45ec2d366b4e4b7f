//! Every change of a task's state, defined once.
//!
//! A [`Transition`] is pure data: the guard that must hold on the stored
//! task, the attribute changes, the state the task goes to with its index
//! time, and the counter deltas that go with it. The stores only render it:
//!
//! - the embedded store evaluates the guard on the task it read inside its
//!   transaction and applies the changes with [`Transition::apply`];
//! - DynamoDB turns the guard into a condition expression and the changes
//!   into an update expression (`store::dynamo::expr`), with the counter
//!   deltas in the same `TransactWriteItems` when there are any.
//!
//! So the two stores cannot disagree on what a claim, a heartbeat or a
//! finish does. The rules every transition keeps:
//!
//! - the attempt number only goes up (claims add one; nothing lowers it,
//!   not even a replace);
//! - every write a worker makes after its claim is fenced on
//!   (`running`, owner, attempt);
//! - a reclaim, whether it takes the task or fails it on its last attempt,
//!   holds only while the lease is still expired;
//! - counters change in the same write as the state they count;
//! - no write grows an item past DynamoDB's item limit (a finish trims the
//!   output tail, then the oldest history, to fit).

use std::time::Duration;

use serde_json::Value;

use crate::model::{Task, TaskState};
use crate::schema::attr;
use crate::time::Timestamp;

pub mod deps;
pub mod escalate;
mod lease;
mod operator;

pub use lease::{Finish, claim, finish, heartbeat, lost_record, reclaim, release, trim_history};

use operator::waiting_on_without_escalation;
pub use operator::{cancel, prune, replace, retry};

/// Most attempts a task's history keeps (the oldest are dropped).
pub const HISTORY_KEEP: usize = 10;

/// Margin for clock skew between hosts: a lease counts as expired only
/// this long after its expiry time.
pub const CLOCK_SKEW_MARGIN: Duration = Duration::from_secs(5);

/// Leases that ran out before this instant (as seen at `now`) may be
/// reclaimed: expiry plus the clock-skew margin.
pub fn reclaim_cutoff(now: Timestamp) -> Timestamp {
    Timestamp::from_millis(now.as_millis() - CLOCK_SKEW_MARGIN.as_millis() as i64)
}

/// The latest index time at which a task in `state` is claimable at
/// `now`: a running task's index time is its lease, which must have run
/// out by the skew margin; a pending one's is its ready time.
pub fn claimable_by(state: crate::model::TaskState, now: Timestamp) -> Timestamp {
    match state {
        crate::model::TaskState::Running => reclaim_cutoff(now),
        _ => now,
    }
}

/// One condition on the stored task. A guard is a conjunction of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// The task does not exist.
    Absent,
    /// The task is in this state.
    State(TaskState),
    /// The task's dependents are exactly these.
    Dependents(Vec<String>),
    /// The steps the task waits on are exactly these.
    WaitingOn(Vec<String>),
    /// The task's attempt is this one.
    Attempt(u32),
    /// The task's owner is this one.
    Owner(String),
    /// The task has no ready time, or it is not after this instant.
    ReadyBy(Timestamp),
    /// The task's lease expired before this instant.
    LeaseExpiredBefore(Timestamp),
    /// No operator asked for the task to be cancelled.
    CancelNotAsked,
    /// An operator asked for the task to be cancelled, and the ask stands
    /// (an escalation that takes the task's run back withdraws it).
    CancelAsked,
}

impl Cond {
    /// Whether the condition holds on `task` (`None`: no such task).
    pub fn holds(&self, task: Option<&Task>) -> bool {
        match (self, task) {
            (Cond::Absent, t) => t.is_none(),
            (_, None) => false,
            (Cond::State(s), Some(t)) => t.state == *s,
            (Cond::Dependents(d), Some(t)) => t.dependents == *d,
            (Cond::WaitingOn(w), Some(t)) => t.waiting_on == *w,
            (Cond::Attempt(a), Some(t)) => t.attempt == *a,
            (Cond::Owner(o), Some(t)) => t.owner.as_deref() == Some(o.as_str()),
            (Cond::ReadyBy(at), Some(t)) => t.ready_at.is_none_or(|r| r <= *at),
            (Cond::LeaseExpiredBefore(at), Some(t)) => t.lease_expires_at.is_some_and(|l| l < *at),
            (Cond::CancelNotAsked, Some(t)) => t.cancelled_by.is_none(),
            (Cond::CancelAsked, Some(t)) => t.cancelled_by.is_some(),
        }
    }
}

/// One change to a task attribute. Values are JSON, the form both stores
/// convert from (attribute names are the task's field names).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Sets the attribute.
    Set(&'static str, Value),
    /// Adds to a number attribute (missing counts as zero).
    Add(&'static str, i64),
    /// Removes the attribute.
    Remove(&'static str),
}

/// What a transition does to the task: new attributes, or the whole item.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Attribute changes on the existing task.
    Update(Vec<Change>),
    /// The whole task, written where none exists.
    Put(Box<Task>),
    /// The task removed (`taskctl prune`).
    Delete,
}

/// A change of one task's state: guard, write, new state and its index
/// time, and the counter deltas that go with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Which transition, for messages.
    pub name: &'static str,
    /// All must hold on the stored task for the write to happen.
    pub guard: Vec<Cond>,
    /// What is written.
    pub write: Write,
    /// The state afterwards.
    pub to: TaskState,
    /// The index time in that state (see [`crate::schema`]); `None` keeps
    /// the task where it is in the index (its state does not change).
    pub state_at: Option<Timestamp>,
    /// Counter attribute and delta, applied in the same write.
    pub counters: Vec<(&'static str, i64)>,
    /// The expiry counter ([`schema::expiring_attr`] of this time) and its
    /// delta, in the same write: +1 when a task becomes `done` with an
    /// expiry, -1 when one leaves `done` (pruned, replaced, re-run).
    pub expiring: Option<(i64, i64)>,
}

/// The expiry counter change of `task` leaving `done` for `to`, if it was
/// counted as expiring; its expiry goes with it (`changes`), so that the
/// table's TTL never deletes a task that is not done.
fn leave_expiry(task: &Task, to: TaskState, changes: &mut Vec<Change>) -> Option<(i64, i64)> {
    if task.state != TaskState::Done || to == TaskState::Done {
        return None;
    }
    let at = task.expires_at?;
    changes.push(Change::Remove(attr::EXPIRES_AT));
    Some((at, -1))
}

/// The counter that counts tasks in `state`, if one does. `pending` and
/// `running` are derived: pending from the others, running from the index.
pub const fn counter_of(state: TaskState) -> Option<&'static str> {
    match state {
        TaskState::Done => Some(attr::DONE),
        TaskState::Failed => Some(attr::FAILED),
        TaskState::Waiting => Some(attr::WAITING),
        TaskState::Cancelled => Some(attr::CANCELLED),
        TaskState::Pending | TaskState::Running => None,
    }
}

/// Counter deltas for a move from `from` (if the task existed) to `to`.
fn counter_moves(from: Option<TaskState>, to: TaskState) -> Vec<(&'static str, i64)> {
    let mut out = Vec::new();
    match from {
        None => out.push((attr::LOADED, 1)),
        Some(f) if f == to => return out,
        Some(f) => {
            if let Some(c) = counter_of(f) {
                out.push((c, -1));
            }
        }
    }
    if let Some(c) = counter_of(to) {
        out.push((c, 1));
    }
    out
}

fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("model values serialise")
}

fn ms(t: Timestamp) -> Value {
    Value::from(t.as_millis())
}

/// The guard of every write a worker makes after its claim.
pub fn fence(task: &Task) -> Vec<Cond> {
    vec![
        Cond::State(TaskState::Running),
        Cond::Owner(task.owner.clone().unwrap_or_default()),
        Cond::Attempt(task.attempt),
    ]
}

/// Whether `stored` is still the attempt `held` (its owner's copy) and an
/// operator asked for it to be cancelled (`taskctl cancel`): the owner's
/// renewals and its end writes other than `done` fail on that, and the
/// owner then stops the script and ends the attempt `cancelled` (given
/// back instead if the ask was withdrawn meanwhile).
pub fn cancel_asked(held: &Task, stored: Option<&Task>) -> bool {
    fence(held).iter().all(|c| c.holds(stored)) && stored.is_some_and(|t| t.cancelled_by.is_some())
}

/// The guard of an end write to `next`: the fence, and no cancel asked
/// unless the attempt succeeded (its work is done); an end as cancelled
/// only while the ask stands.
fn end_guard(task: &Task, next: TaskState) -> Vec<Cond> {
    let mut guard = fence(task);
    match next {
        TaskState::Done => {}
        TaskState::Cancelled => guard.push(Cond::CancelAsked),
        _ => guard.push(Cond::CancelNotAsked),
    }
    guard
}

/// How far before its load a loaded task's place in the pending index may
/// be: each task's own offset, from its id, up to a second. The tasks of
/// one load would otherwise share one ready time, and workers could only
/// start at the ends of a shard; spread, they start anywhere in it.
pub const LOAD_SPREAD_MS: u64 = 1000;

/// Where a loaded task sits in the state index: its ready time if it has
/// one, else its load time less its own spread offset.
pub fn load_place(task: &Task) -> Timestamp {
    match (task.state, task.ready_at) {
        (TaskState::Pending | TaskState::Waiting, Some(ready)) => ready,
        (TaskState::Pending | TaskState::Waiting, None) => {
            // The high bits: the low ones choose the task's shard.
            let offset =
                (xxhash_rust::xxh3::xxh3_64(task.task_id.as_bytes()) >> 32) % LOAD_SPREAD_MS;
            Timestamp::from_millis(
                task.created_at
                    .as_millis()
                    .saturating_sub(i64::try_from(offset).unwrap_or(0)),
            )
        }
        _ => task.updated_at,
    }
}

/// Load-insert: writes `task` (pending, waiting, or failed because what it
/// waits for failed) where no task of that id exists, and counts it as
/// loaded.
pub fn insert(task: &Task) -> Transition {
    Transition {
        name: "insert",
        guard: vec![Cond::Absent],
        write: Write::Put(Box::new(task.clone())),
        to: task.state,
        state_at: Some(load_place(task)),
        counters: counter_moves(None, task.state),
        expiring: None,
    }
}

impl Transition {
    /// Whether the guard holds on `current` (`None`: no such task).
    pub fn allows(&self, current: Option<&Task>) -> bool {
        self.guard.iter().all(|c| c.holds(current))
    }

    /// The task as this transition leaves it, or `None` when the guard
    /// does not hold. The reference semantics both stores follow.
    pub fn apply(&self, current: Option<&Task>) -> Option<Task> {
        if !self.allows(current) {
            return None;
        }
        debug_assert!(
            self.state_at.is_some() || current.is_some_and(|c| c.state == self.to),
            "{} keeps the index place but changes the state",
            self.name
        );
        match &self.write {
            Write::Put(task) => Some((**task).clone()),
            // The task as it was: the guard held, and it is gone.
            Write::Delete => current.cloned(),
            Write::Update(changes) => {
                let Value::Object(mut fields) = json(current?) else {
                    unreachable!("a task serialises as an object")
                };
                for change in changes {
                    match change {
                        Change::Set(name, v) => {
                            fields.insert((*name).to_owned(), v.clone());
                        }
                        Change::Add(name, by) => {
                            let was = fields.get(*name).and_then(Value::as_i64).unwrap_or(0);
                            fields.insert((*name).to_owned(), Value::from(was + by));
                        }
                        Change::Remove(name) => {
                            fields.remove(*name);
                        }
                    }
                }
                Some(
                    serde_json::from_value(Value::Object(fields))
                        .expect("transitions write valid tasks"),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests;
