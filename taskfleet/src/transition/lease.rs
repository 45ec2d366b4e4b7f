//! The transitions of a worker's attempt, from its claim to its end:
//! claim, reclaim of a task whose owner died, heartbeat, finish and
//! release. Every one after the claim is fenced on (`running`, owner,
//! attempt).

use std::time::Duration;

use serde_json::Value;

use super::{
    Change, Cond, HISTORY_KEEP, Transition, Write, counter_moves, deps, end_guard, fence, json, ms,
    reclaim_cutoff,
};
use crate::model::{AttemptRecord, FailureClass, Task, TaskState};
use crate::schema::{self, attr};
use crate::time::Timestamp;

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
