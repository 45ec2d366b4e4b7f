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

use crate::model::{AttemptRecord, FailureClass, Task, TaskState};
use crate::schema::{self, attr};
use crate::time::Timestamp;

pub mod deps;
pub mod escalate;
mod operator;

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

/// The changes every claim makes: running for `owner`, attempt + 1, lease
/// until `now + lease`, the last attempt's outcome cleared.
fn claim_changes(owner: &str, now: Timestamp, until: Timestamp) -> Vec<Change> {
    vec![
        Change::Set(attr::STATE, json(&TaskState::Running)),
        Change::Set(attr::OWNER, Value::from(owner)),
        Change::Add(attr::ATTEMPT, 1),
        Change::Set(attr::LEASE_EXPIRES_AT, ms(until)),
        Change::Set(attr::STARTED_AT, ms(now)),
        Change::Set(attr::UPDATED_AT, ms(now)),
        Change::Remove(attr::FINISHED_AT),
        Change::Remove(attr::READY_AT),
        Change::Remove(attr::EXIT_CODE),
        Change::Remove(attr::SIGNAL),
        Change::Remove(attr::FAILURE_CLASS),
        Change::Remove(attr::CANCELLED_BY),
        Change::Remove(attr::CANCELLED_AT),
        // The earlier attempt's log is in its history record; a log of
        // this one is named by its renewals.
        Change::Remove(attr::LOG_URI),
    ]
}

/// Claim of a pending task whose ready time has come.
pub fn claim(owner: &str, now: Timestamp, lease: Duration) -> Transition {
    let until = now.plus(lease);
    Transition {
        name: "claim",
        guard: vec![Cond::State(TaskState::Pending), Cond::ReadyBy(now)],
        write: Write::Update(claim_changes(owner, now, until)),
        to: TaskState::Running,
        state_at: Some(until),
        counters: Vec::new(),
        expiring: None,
    }
}

/// The record of an attempt whose owner died (its lease expired).
pub fn lost_record(task: &Task, now: Timestamp, outcome: TaskState) -> AttemptRecord {
    AttemptRecord {
        attempt: task.attempt,
        owner: task.owner.clone().unwrap_or_default(),
        started_at: task.started_at.unwrap_or(now),
        finished_at: now,
        outcome,
        exit_code: None,
        signal: None,
        failure_class: Some(FailureClass::Lost),
        log_uri: task.log_uri.clone(),
        provenance: None,
    }
}

/// Room a lost attempt's record takes in the history, at most.
const LOST_RECORD_ROOM: usize = 2 * 1024;

/// Reclaim of `old`, a running task whose owner let its lease expire (as
/// read at `now`). The dead attempt is recorded as `lost` and counts as a
/// failed attempt (unless the step's rules make lost attempts free, or
/// give them their own limit: [`crate::rules`]). With attempts left the
/// task is claimed for `owner`; on its last attempt it becomes `failed`
/// instead. Either way the write
/// holds only if the task is still that attempt and its lease is still
/// expired: a heartbeat that lands in between wins.
pub fn reclaim(
    old: &Task,
    owner: &str,
    now: Timestamp,
    lease: Duration,
    settings: &crate::model::StepSettings,
) -> Transition {
    let mut guard = vec![
        Cond::State(TaskState::Running),
        Cond::Attempt(old.attempt),
        Cond::LeaseExpiredBefore(reclaim_cutoff(now)),
    ];
    // A cancel asked after the read must not be run over (the claim would
    // clear its mark), nor one withdrawn after it carried out.
    guard.push(if old.cancelled_by.is_none() {
        Cond::CancelNotAsked
    } else {
        Cond::CancelAsked
    });
    // The lost record grows the item: make room for it in the history
    // (never a reason for the write to fail).
    let mut base = old.clone();
    while !base.history.is_empty()
        && schema::task_size(&base) + LOST_RECORD_ROOM > schema::MAX_WRITE_BYTES
    {
        base.history.remove(0);
    }
    let lost = crate::rules::Failure {
        class: FailureClass::Lost,
        exit_code: None,
        signal: None,
    };
    if old.cancelled_by.is_some() {
        // Its owner died before it could stop it as asked.
        return reclaim_to_end(old, &base, now, guard, TaskState::Cancelled);
    }
    let counts = match crate::rules::decide(settings, &lost, old.failed_attempts) {
        crate::rules::Next::Retry { counts } => counts,
        // Rules refuse escalation of lost attempts; a failure either way.
        crate::rules::Next::Fail | crate::rules::Next::Escalate(_) => {
            return reclaim_to_end(old, &base, now, guard, TaskState::Failed);
        }
    };
    let until = now.plus(lease);
    let mut changes = claim_changes(owner, now, until);
    let mut history = base.history.clone();
    history.push(lost_record(old, now, TaskState::Pending));
    trim_history(&mut history);
    changes.push(Change::Set(attr::HISTORY, json(&history)));
    if counts {
        changes.push(Change::Add(attr::FAILED_ATTEMPTS, 1));
    }
    Transition {
        name: "reclaim",
        guard,
        write: Write::Update(changes),
        to: TaskState::Running,
        state_at: Some(until),
        counters: Vec::new(),
        expiring: None,
    }
}

/// A reclaim that ends the task: `failed` on its last attempt, or
/// `cancelled` when an operator had asked for that; the lost attempt
/// recorded.
fn reclaim_to_end(
    old: &Task,
    base: &Task,
    now: Timestamp,
    guard: Vec<Cond>,
    to: TaskState,
) -> Transition {
    let record = lost_record(old, now, to);
    let mut changes = end_changes(base, &record, None);
    changes.push(Change::Set(attr::STATE, json(&to)));
    changes.push(Change::Set(attr::FINISHED_AT, ms(now)));
    if to == TaskState::Failed {
        changes.push(Change::Add(attr::FAILED_ATTEMPTS, 1));
    }
    Transition {
        name: if to == TaskState::Failed {
            "reclaim (last attempt: failed)"
        } else {
            "reclaim (cancelled)"
        },
        guard,
        write: Write::Update(changes),
        to,
        state_at: Some(now),
        counters: counter_moves(Some(TaskState::Running), to),
        expiring: None,
    }
}

/// Lease renewal of a task we hold, until `until`.
pub fn heartbeat(task: &Task, until: Timestamp, now: Timestamp) -> Transition {
    let mut changes = vec![
        Change::Set(attr::LEASE_EXPIRES_AT, ms(until)),
        Change::Set(attr::UPDATED_AT, ms(now)),
    ];
    // Where the running attempt's log goes, as its owner holds the task:
    // so that a reclaim records it for the lost attempt.
    if let Some(uri) = &task.log_uri {
        changes.push(Change::Set(attr::LOG_URI, Value::from(uri.as_str())));
    }
    let mut guard = fence(task);
    guard.push(Cond::CancelNotAsked);
    Transition {
        name: "heartbeat",
        guard,
        write: Write::Update(changes),
        to: TaskState::Running,
        state_at: Some(until),
        counters: Vec::new(),
        expiring: None,
    }
}

/// How an attempt ended, as the worker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// Where the task goes: `done`, `failed`, `pending` (retry or
    /// release), `waiting` (escalation) or `cancelled` (an operator asked).
    pub next: TaskState,
    /// Whether this attempt counts against the attempt limit.
    pub counts_as_failure: bool,
    /// When a `pending` task may be claimed again.
    pub ready_at: Timestamp,
    /// The attempt, for the history.
    pub record: AttemptRecord,
    /// The end of the attempt's output.
    pub output_tail: Option<String>,
    /// With `next` `waiting`: the step whose task of the same id a retry
    /// rule moves the run to (see [`crate::rules`]).
    pub escalate_to: Option<String>,
    /// With `next` `done`: when the task expires (epoch seconds), from the
    /// step's `expire_after` ([`crate::model::StepSettings::expiry_of`]).
    pub expires_at: Option<i64>,
}

/// The changes that end an attempt: owner and lease gone, the attempt's
/// outcome recorded on the task and appended to its history.
fn end_changes(task: &Task, record: &AttemptRecord, tail: Option<&str>) -> Vec<Change> {
    let mut history = task.history.clone();
    history.push(record.clone());
    trim_history(&mut history);
    let opt = |name: &'static str, v: Option<Value>| match v {
        Some(v) => Change::Set(name, v),
        None => Change::Remove(name),
    };
    let mut changes = vec![
        Change::Set(attr::UPDATED_AT, ms(record.finished_at)),
        Change::Set(attr::HISTORY, json(&history)),
        Change::Remove(attr::OWNER),
        Change::Remove(attr::LEASE_EXPIRES_AT),
        opt(attr::EXIT_CODE, record.exit_code.map(Value::from)),
        opt(attr::SIGNAL, record.signal.map(Value::from)),
        opt(attr::FAILURE_CLASS, record.failure_class.as_ref().map(json)),
        opt(attr::LOG_URI, record.log_uri.clone().map(Value::from)),
    ];
    // A reclaim has no output of its own: the dead owner's tail stays.
    if record.failure_class != Some(FailureClass::Lost) {
        changes.push(opt(attr::OUTPUT_TAIL, tail.map(Value::from)));
    }
    changes
}

/// The end of an attempt of a task we hold: done, retry (pending after a
/// delay), failed, or released (pending at once, no attempt used).
///
/// The written task never passes DynamoDB's item limit: when the output
/// tail and history would make it too large, the tail is cut from the
/// front, then the oldest history entries are dropped.
pub fn finish(task: &Task, finish: &Finish) -> Transition {
    let mut finish = finish.clone();
    let mut trimmed = task.clone();
    loop {
        let t = finish_unchecked(&trimmed, &finish);
        let after = t
            .apply(Some(&trimmed))
            .expect("the fence holds on the task it was built from");
        let excess = schema::task_size(&after).saturating_sub(schema::MAX_WRITE_BYTES);
        if excess == 0 {
            return Transition {
                guard: end_guard(task, finish.next),
                ..t
            };
        }
        match finish.output_tail.as_mut() {
            Some(tail) if !tail.is_empty() => {
                let cut = excess.min(tail.len());
                let mut at = cut;
                while !tail.is_char_boundary(at) {
                    at += 1;
                }
                tail.drain(..at);
            }
            _ if !trimmed.history.is_empty() => {
                trimmed.history.remove(0);
            }
            // Nothing left to trim: the write would fail; let the store say
            // so rather than loop.
            _ => {
                return Transition {
                    guard: end_guard(task, finish.next),
                    ..t
                };
            }
        }
    }
}

fn finish_unchecked(task: &Task, finish: &Finish) -> Transition {
    let record = &finish.record;
    let mut changes = end_changes(task, record, finish.output_tail.as_deref());
    changes.push(Change::Set(attr::STATE, json(&finish.next)));
    if finish.counts_as_failure {
        changes.push(Change::Add(attr::FAILED_ATTEMPTS, 1));
    }
    let mut expiring = None;
    if finish.next == TaskState::Done {
        // Its work was done before a cancel asked could stop it.
        changes.push(Change::Remove(attr::CANCELLED_BY));
        changes.push(Change::Remove(attr::CANCELLED_AT));
        if let Some(at) = finish.expires_at {
            changes.push(Change::Set(attr::EXPIRES_AT, Value::from(at)));
            expiring = Some((at, 1));
        }
    }
    if let Some(step) = &finish.escalate_to {
        assert_eq!(
            finish.next,
            TaskState::Waiting,
            "an escalated task waits for its run on {step}"
        );
        let mut waiting_on = task.waiting_on.clone();
        waiting_on.push(step.clone());
        changes.push(Change::Set(attr::WAITING_ON, json(&waiting_on)));
        changes.push(Change::Set(attr::ESCALATED_TO, Value::from(step.as_str())));
        changes.push(Change::Set(
            attr::REASON,
            Value::from(format!(
                "escalated to {step}/{} after {} (attempt {})",
                task.task_id,
                deps::how_it_failed(record.exit_code, record.signal, record.failure_class),
                record.attempt
            )),
        ));
    }
    let state_at = match finish.next {
        TaskState::Done | TaskState::Failed | TaskState::Cancelled => {
            changes.push(Change::Set(attr::FINISHED_AT, ms(record.finished_at)));
            changes.push(Change::Remove(attr::READY_AT));
            record.finished_at
        }
        _ => {
            changes.push(Change::Set(attr::READY_AT, ms(finish.ready_at)));
            finish.ready_at
        }
    };
    Transition {
        name: match (finish.next, record.failure_class) {
            (TaskState::Waiting, _) => "escalate",
            (TaskState::Done, _) => "finish (done)",
            (TaskState::Failed, _) => "finish (failed)",
            (TaskState::Cancelled, _) => "finish (cancelled)",
            (_, Some(FailureClass::Interrupted)) => "release",
            _ => "finish (retry)",
        },
        guard: fence(task),
        write: Write::Update(changes),
        to: finish.next,
        state_at: Some(state_at),
        counters: counter_moves(Some(TaskState::Running), finish.next),
        expiring,
    }
}

/// Release of a task we hold (stop, spot notice, host trouble): pending at
/// once, without using an attempt. The attempt is recorded with `class`
/// (interrupted, or the host's trouble).
pub fn release(task: &Task, record: AttemptRecord, tail: Option<String>) -> Transition {
    let ready_at = record.finished_at;
    finish(
        task,
        &Finish {
            next: TaskState::Pending,
            counts_as_failure: false,
            ready_at,
            record: AttemptRecord {
                outcome: TaskState::Pending,
                ..record
            },
            output_tail: tail,
            escalate_to: None,
            expires_at: None,
        },
    )
}

/// Keeps the last [`HISTORY_KEEP`] attempts.
pub fn trim_history(history: &mut Vec<AttemptRecord>) {
    if history.len() > HISTORY_KEEP {
        history.drain(..history.len() - HISTORY_KEEP);
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
