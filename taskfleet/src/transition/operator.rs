//! What operators do to tasks: retry, replace (a load that changes a
//! task's script or row), cancel, prune. Each is one guarded write on the
//! task as the operator's command read it; one that changed meanwhile is
//! left alone and reported.

use serde_json::Value;

use super::{
    Change, Cond, Transition, Write, counter_moves, counter_of, deps, json, leave_expiry, ms,
};
use crate::model::{Task, TaskState};
use crate::schema::attr;
use crate::time::Timestamp;

/// Prune: removes `task` (finished, as read), provided it is still that
/// state and attempt and nothing waits for it that might still need it
/// (its dependents as read), and takes it off the counts.
pub fn prune(task: &Task) -> Transition {
    let mut counters = vec![(attr::LOADED, -1)];
    if let Some(c) = counter_of(task.state) {
        counters.push((c, -1));
    }
    Transition {
        name: "prune",
        guard: vec![
            Cond::State(task.state),
            Cond::Attempt(task.attempt),
            Cond::Dependents(task.dependents.clone()),
        ],
        write: Write::Delete,
        to: task.state,
        state_at: None,
        counters,
        expiring: task
            .expires_at
            .filter(|_| task.state == TaskState::Done)
            .map(|at| (at, -1)),
    }
}

/// The steps `task` still waits for once put back by an operator (retry,
/// replace): an escalated run is left behind, the task starts over on its
/// own step.
pub(super) fn waiting_on_without_escalation(task: &Task) -> Vec<String> {
    task.waiting_on
        .iter()
        .filter(|s| Some(s.as_str()) != task.escalated_to.as_deref())
        .cloned()
        .collect()
}

/// Replace: gives `old` (not running) the script and row of `new` and
/// puts it back to pending with a fresh attempt budget, or to waiting if
/// it still waits for upstream tasks. The attempt number and the history
/// stay: attempt numbers name logs and work directories and only ever go
/// up.
pub fn replace(old: &Task, new: &Task, now: Timestamp) -> Transition {
    assert!(
        old.state != TaskState::Running,
        "running tasks are never replaced"
    );
    let waiting_on = waiting_on_without_escalation(old);
    let to = if waiting_on.is_empty() {
        TaskState::Pending
    } else {
        TaskState::Waiting
    };
    let mut changes = vec![
        Change::Set(attr::STATE, json(&to)),
        Change::Remove(attr::REASON),
        Change::Remove(attr::ESCALATED_TO),
        deps::set_list(attr::WAITING_ON, &waiting_on),
        Change::Set(attr::TASK_SCRIPT, Value::from(new.script.as_str())),
        Change::Set(attr::SCRIPT_DIGEST, Value::from(new.script_digest.as_str())),
        Change::Set(attr::ENV, json(&new.env)),
        if new.columns.is_empty() {
            Change::Remove(attr::COLUMNS)
        } else {
            Change::Set(attr::COLUMNS, json(&new.columns))
        },
        Change::Set(attr::FAILED_ATTEMPTS, Value::from(0)),
        Change::Set(attr::UPDATED_AT, ms(now)),
        Change::Remove(attr::READY_AT),
        Change::Remove(attr::OWNER),
        Change::Remove(attr::LEASE_EXPIRES_AT),
        Change::Remove(attr::CANCELLED_BY),
        Change::Remove(attr::CANCELLED_AT),
        Change::Remove(attr::FINISHED_AT),
        Change::Remove(attr::EXIT_CODE),
        Change::Remove(attr::SIGNAL),
        Change::Remove(attr::FAILURE_CLASS),
        Change::Remove(attr::OUTPUT_TAIL),
    ];
    let expiring = leave_expiry(old, to, &mut changes);
    Transition {
        name: "replace",
        // What it waits for as read: an upstream task done in between
        // would otherwise be written back as still awaited.
        guard: vec![
            Cond::State(old.state),
            Cond::Attempt(old.attempt),
            Cond::WaitingOn(old.waiting_on.clone()),
        ],
        write: Write::Update(changes),
        to,
        state_at: Some(now),
        counters: counter_moves(Some(old.state), to),
        expiring,
    }
}

/// An operator's retry of a failed (or cancelled) task, `task` as read at
/// `attempt`: back to pending with a fresh attempt budget, provided it is
/// still that attempt in that state; back to waiting instead while it still waits for
/// upstream tasks (a task failed because its upstream task did runs only
/// once that one is done). A task whose run a retry rule escalated starts
/// over on its own step (the rule may escalate it again). Its attempt
/// number (the next claim adds one) and history stay; who asked and when
/// are recorded.
pub fn retry(task: &Task, attempt: u32, by: &str, now: Timestamp) -> Transition {
    // Only failed and cancelled tasks are retried: one read in any other
    // state (it changed since it was listed) fails the guard.
    let from = match task.state {
        TaskState::Cancelled => TaskState::Cancelled,
        _ => TaskState::Failed,
    };
    let waiting_on = waiting_on_without_escalation(task);
    let to = if waiting_on.is_empty() {
        TaskState::Pending
    } else {
        TaskState::Waiting
    };
    Transition {
        name: "retry",
        guard: vec![
            Cond::State(from),
            Cond::Attempt(attempt),
            Cond::WaitingOn(task.waiting_on.clone()),
        ],
        write: Write::Update(vec![
            Change::Set(attr::STATE, json(&to)),
            Change::Set(attr::FAILED_ATTEMPTS, Value::from(0)),
            Change::Set(attr::RETRIED_BY, Value::from(by)),
            Change::Set(attr::RETRIED_AT, ms(now)),
            Change::Set(attr::UPDATED_AT, ms(now)),
            Change::Remove(attr::READY_AT),
            Change::Remove(attr::OWNER),
            Change::Remove(attr::LEASE_EXPIRES_AT),
            Change::Remove(attr::ESCALATED_TO),
            Change::Remove(attr::REASON),
            Change::Remove(attr::CANCELLED_BY),
            Change::Remove(attr::CANCELLED_AT),
            deps::set_list(attr::WAITING_ON, &waiting_on),
        ]),
        to,
        state_at: Some(now),
        counters: counter_moves(Some(from), to),
        expiring: None,
    }
}

/// An operator's cancel (`taskctl cancel`) of `task` as read, by `by`:
///
/// - `pending` or `waiting`: `cancelled` at once, out of the claimable
///   index, provided it is still that state, attempt and wait; what waits
///   for it is cancelled with it (class `upstream`, [`deps::follow`]);
/// - `running`: it stays its owner's, marked as asked to stop (provided it
///   is still that attempt and nobody asked before). The owner's next
///   renewal fails on the mark ([`super::cancel_asked`]): it kills the
///   script and ends the attempt `cancelled`, without using an attempt. A
///   reclaim after the owner died ends it `cancelled` as well. Both need
///   the ask to stand: an escalation that takes the run back withdraws it
///   ([`super::escalate::take_over`]).
///
/// `None` for a task that has ended, or runs with a cancel asked already.
pub fn cancel(task: &Task, by: &str, now: Timestamp) -> Option<Transition> {
    let marks = [
        Change::Set(attr::CANCELLED_BY, Value::from(by)),
        Change::Set(attr::CANCELLED_AT, ms(now)),
        Change::Set(attr::UPDATED_AT, ms(now)),
    ];
    match task.state {
        TaskState::Pending | TaskState::Waiting => {
            let mut changes = marks.to_vec();
            changes.push(Change::Set(attr::STATE, json(&TaskState::Cancelled)));
            changes.push(Change::Remove(attr::READY_AT));
            // Cancelled on its own account: a class left from an earlier
            // failure would read as cancelled with its upstream task.
            changes.push(Change::Remove(attr::FAILURE_CLASS));
            Some(Transition {
                name: "cancel",
                guard: vec![
                    Cond::State(task.state),
                    Cond::Attempt(task.attempt),
                    Cond::WaitingOn(task.waiting_on.clone()),
                ],
                write: Write::Update(changes),
                to: TaskState::Cancelled,
                state_at: Some(now),
                counters: counter_moves(Some(task.state), TaskState::Cancelled),
                expiring: None,
            })
        }
        TaskState::Running if task.cancelled_by.is_none() => Some(Transition {
            name: "cancel (ask the owner)",
            guard: vec![
                Cond::State(TaskState::Running),
                Cond::Attempt(task.attempt),
                Cond::CancelNotAsked,
            ],
            write: Write::Update(marks.to_vec()),
            to: TaskState::Running,
            state_at: None,
            counters: Vec::new(),
            expiring: None,
        }),
        _ => None,
    }
}
