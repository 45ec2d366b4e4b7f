//! Tasks that wait for the task of the same id in other steps (`load
//! --after`): what a dependent starts as, how an upstream task learns of
//! it, and what the end of an upstream task does to its dependents.
//!
//! The links are on the tasks themselves, so the work per completion is
//! bounded by the workflow's steps, never by the step's size:
//!
//! - a dependent lists the steps it waits for (`after`) and those not done
//!   yet (`waiting_on`);
//! - its upstream task lists the steps that wait for it (`dependents`),
//!   written by the dependent's load in the same atomic write as the
//!   dependent, guarded on the upstream task as read;
//! - the write that ends an upstream task (done, failed, or back from
//!   failed) is guarded on its `dependents` as read and carries what it
//!   does to each of them ([`Cascade`]): promotion to `pending` when the
//!   last upstream task is done, `failed` with class `upstream` when one
//!   fails (and on down the chain), `waiting` again when a failed one is
//!   put back.
//!
//! A load that links a dependent while the upstream task runs changes the
//! upstream's `dependents`, so the worker's end write fails its guard; the
//! worker reads the task again and, still its owner, ends it with the
//! dependent included. Neither side can miss the other.

use serde_json::Value;

use super::{Change, Cond, Transition, Write, counter_moves, json, ms};
use crate::model::{FailureClass, Task, TaskState};
use crate::schema::attr;
use crate::time::Timestamp;

/// Most dependent tasks one end write carries: a chain of 32 steps after
/// one sample's task. On DynamoDB each is a write, a counter update and a
/// check that its step is the one read, besides the own write and its
/// counter: `3 * 32 + 2` items, within a transaction's 100.
pub const MAX_CASCADE: usize = 32;

/// Most steps the tasks of one step wait for (`load --after`). On DynamoDB
/// a task is loaded with a link (or check) per upstream step, and its
/// load's transaction checks each upstream step: past this, a transaction
/// of 100 items would carry fewer than two tasks.
pub const MAX_AFTER: usize = 32;

const _: () = assert!(3 * MAX_CASCADE + 2 <= crate::schema::MAX_TRANSACTION_ITEMS);
const _: () =
    assert!((crate::schema::MAX_TRANSACTION_ITEMS - 1 - MAX_AFTER) / (1 + MAX_AFTER) >= 2);

/// The list as a change: set, or removed when empty (an empty list is
/// never stored, so "exactly these" conditions can say "none").
pub(super) fn set_list(name: &'static str, list: &[String]) -> Change {
    if list.is_empty() {
        Change::Remove(name)
    } else {
        Change::Set(name, json(&list))
    }
}

/// Sets `task` (new, pending, of a step loaded `--after` the steps of
/// `upstream`) to what its upstream tasks say, as read: `failed` with class
/// `upstream` if one failed, `pending` if all are done, else `waiting` on
/// those not done (with the reason when one does not exist).
pub fn start(task: &mut Task, upstream: &[(String, Option<Task>)], now: Timestamp) {
    task.after = upstream.iter().map(|(s, _)| s.clone()).collect();
    task.waiting_on = upstream
        .iter()
        .filter(|(_, t)| t.as_ref().is_none_or(|t| t.state != TaskState::Done))
        .map(|(s, _)| s.clone())
        .collect();
    let failed = upstream
        .iter()
        .find_map(|(_, t)| t.as_ref().filter(|t| t.state == TaskState::Failed));
    let missing: Vec<String> = upstream
        .iter()
        .filter(|(_, t)| t.is_none())
        .map(|(s, _)| format!("{s}/{}", task.task_id))
        .collect();
    let cancelled = upstream
        .iter()
        .find_map(|(_, t)| t.as_ref().filter(|t| t.state == TaskState::Cancelled));
    if let Some(up) = failed {
        task.state = TaskState::Failed;
        task.failure_class = Some(FailureClass::Upstream);
        task.finished_at = Some(now);
        task.reason = Some(failed_reason(up));
    } else if let Some(up) = cancelled {
        task.state = TaskState::Cancelled;
        task.failure_class = Some(FailureClass::Upstream);
        task.cancelled_by.clone_from(&up.cancelled_by);
        task.cancelled_at = Some(now);
        task.reason = Some(cancelled_reason(up));
    } else if task.waiting_on.is_empty() {
        task.state = TaskState::Pending;
    } else {
        task.state = TaskState::Waiting;
        if !missing.is_empty() {
            task.reason = Some(format!(
                "{} not loaded: the task waits until it is loaded and done",
                missing.join(", ")
            ));
        }
    }
}

/// How an attempt failed, in a word or two: `exit 3`, `signal 9`, `lost`.
pub(super) fn how_it_failed(
    exit_code: Option<i32>,
    signal: Option<i32>,
    class: Option<FailureClass>,
) -> String {
    match (exit_code, signal, class) {
        (Some(code), _, _) => format!("exit {code}"),
        (None, Some(sig), _) => format!("signal {sig}"),
        (None, None, Some(class)) => class.as_str().to_owned(),
        (None, None, None) => "failed".to_owned(),
    }
}

fn cancelled_reason(up: &Task) -> String {
    format!("upstream task {}/{} was cancelled", up.step, up.task_id)
}

fn failed_reason(up: &Task) -> String {
    format!(
        "upstream task {}/{} failed ({}, attempt {})",
        up.step,
        up.task_id,
        how_it_failed(up.exit_code, up.signal, up.failure_class),
        up.attempt
    )
}

/// Link: adds `step` to the dependents of `upstream` (as read), provided it
/// is still that state, attempt and dependents. Its state and index place
/// stay. `None` when it lists `step` already.
pub fn link(upstream: &Task, step: &str) -> Option<Transition> {
    if upstream.dependents.iter().any(|d| d == step) {
        return None;
    }
    let mut dependents = upstream.dependents.clone();
    dependents.push(step.to_owned());
    dependents.sort();
    let mut guard = as_read(upstream);
    guard.push(Cond::Dependents(upstream.dependents.clone()));
    Some(Transition {
        name: "link dependent",
        guard,
        write: Write::Update(vec![set_list(attr::DEPENDENTS, &dependents)]),
        to: upstream.state,
        state_at: None,
        counters: Vec::new(),
        expiring: None,
    })
}

/// What a new dependent's start holds on for an upstream task that lists
/// its step already (a task of the same id was loaded and removed): the
/// upstream task still in the state and run it was read in.
pub fn as_read(upstream: &Task) -> Vec<Cond> {
    vec![Cond::State(upstream.state), Cond::Attempt(upstream.attempt)]
}

/// What an end write holds on for a task its plan read and writes nothing
/// to (`None`: read as missing): still missing, or in the state, run and
/// waits it was read in. A dependent loaded, or loaded again, after the
/// read then fails the write, which is planned again with it.
pub fn unchanged(read: Option<&Task>) -> Vec<Cond> {
    match read {
        None => vec![Cond::Absent],
        Some(t) => vec![
            Cond::State(t.state),
            Cond::Attempt(t.attempt),
            Cond::WaitingOn(t.waiting_on.clone()),
        ],
    }
}

/// What `upstream`, as its own write leaves it, does to `dep` (one of its
/// dependents, as read): `None` when nothing.
pub fn follow(upstream: &Task, dep: &Task, now: Timestamp) -> Option<Transition> {
    let step = upstream.step.as_str();
    if !dep.waiting_on.iter().any(|s| s == step) {
        return None;
    }
    if dep.escalated_to.as_deref() == Some(step) {
        return super::escalate::take_outcome(upstream, dep, now);
    }
    let mut guard = vec![
        Cond::State(dep.state),
        Cond::Attempt(dep.attempt),
        Cond::WaitingOn(dep.waiting_on.clone()),
    ];
    let rest: Vec<String> = dep
        .waiting_on
        .iter()
        .filter(|s| *s != step)
        .cloned()
        .collect();
    let (name, to, mut changes) = match (upstream.state, dep.state) {
        (TaskState::Done, TaskState::Waiting) if rest.is_empty() => (
            "promote",
            TaskState::Pending,
            vec![
                Change::Set(attr::STATE, json(&TaskState::Pending)),
                Change::Remove(attr::REASON),
                Change::Remove(attr::READY_AT),
            ],
        ),
        // One of several done; or done while the dependent is failed
        // because another failed: it no longer waits for this one.
        (TaskState::Done, _) => ("upstream done", dep.state, Vec::new()),
        (TaskState::Failed, TaskState::Waiting) => {
            guard.push(Cond::Dependents(dep.dependents.clone()));
            (
                "fail upstream",
                TaskState::Failed,
                vec![
                    Change::Set(attr::STATE, json(&TaskState::Failed)),
                    Change::Set(attr::FAILURE_CLASS, json(&FailureClass::Upstream)),
                    Change::Set(attr::REASON, Value::from(failed_reason(upstream))),
                    Change::Set(attr::FINISHED_AT, ms(now)),
                ],
            )
        }
        (TaskState::Cancelled, TaskState::Waiting) => {
            guard.push(Cond::Dependents(dep.dependents.clone()));
            (
                "cancel dependent",
                TaskState::Cancelled,
                vec![
                    Change::Set(attr::STATE, json(&TaskState::Cancelled)),
                    Change::Set(attr::FAILURE_CLASS, json(&FailureClass::Upstream)),
                    Change::Set(attr::REASON, Value::from(cancelled_reason(upstream))),
                    match &upstream.cancelled_by {
                        Some(by) => Change::Set(attr::CANCELLED_BY, Value::from(by.as_str())),
                        None => Change::Remove(attr::CANCELLED_BY),
                    },
                    Change::Set(attr::CANCELLED_AT, ms(now)),
                    Change::Remove(attr::READY_AT),
                ],
            )
        }
        (TaskState::Pending | TaskState::Waiting, TaskState::Failed | TaskState::Cancelled)
            if dep.failure_class == Some(FailureClass::Upstream) =>
        {
            guard.push(Cond::Dependents(dep.dependents.clone()));
            ("requeue dependent", TaskState::Waiting, {
                let mut c = back_to_waiting();
                c.push(Change::Remove(attr::REASON));
                c
            })
        }
        _ => return None,
    };
    // A dependent that fails or waits again keeps every step it waits for;
    // one that is promoted or hears of one more done drops this one.
    if upstream.state == TaskState::Done {
        changes.push(set_list(attr::WAITING_ON, &rest));
    }
    changes.push(Change::Set(attr::UPDATED_AT, ms(now)));
    let moved = to != dep.state;
    Some(Transition {
        name,
        guard,
        write: Write::Update(changes),
        to,
        state_at: moved.then_some(now),
        counters: counter_moves(Some(dep.state), to),
        expiring: None,
    })
}

/// The changes that put a task failed because of what it waits for back
/// to `waiting` (its reason aside).
pub(super) fn back_to_waiting() -> Vec<Change> {
    vec![
        Change::Set(attr::STATE, json(&TaskState::Waiting)),
        Change::Remove(attr::FAILURE_CLASS),
        Change::Remove(attr::FINISHED_AT),
        Change::Remove(attr::EXIT_CODE),
        Change::Remove(attr::SIGNAL),
        Change::Remove(attr::CANCELLED_BY),
        Change::Remove(attr::CANCELLED_AT),
    ]
}

/// One planned write of a cascade: a task and its transition.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The task's step.
    pub step: String,
    /// The task.
    pub task_id: String,
    /// What is written, guarded on the task as read.
    pub transition: Transition,
}

/// A task a cascade read, and what holds while it is as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    /// The task's step.
    pub step: String,
    /// The task.
    pub task_id: String,
    /// [`unchanged`] on the task as read.
    pub guard: Vec<Cond>,
}

/// `base`, the owner's copy of a task it ends, with what others may have
/// changed on the stored task since the owner read it: the steps that wait
/// for it, and an operator's cancel ask (who asked goes on to the
/// dependents' cancel). The end's plan is made from this.
pub fn rebase(base: &mut Task, stored: &Task) {
    base.dependents.clone_from(&stored.dependents);
    base.cancelled_by.clone_from(&stored.cancelled_by);
    base.cancelled_at = stored.cancelled_at;
}

/// An end write (or a put-back from failed) and what it carries to the
/// dependents, level by level: the store reads the tasks
/// [`Cascade::wanted`] names, [`Cascade::feed`]s them back, until nothing
/// is wanted; [`Cascade::writes`] is then one atomic write.
#[derive(Debug, Clone)]
pub struct Cascade {
    writes: Vec<Planned>,
    /// Tasks as their planned write leaves them whose dependents are still
    /// to be read.
    frontier: Vec<Task>,
    now: Timestamp,
    /// Dependents past [`MAX_CASCADE`] were met: the write must not happen.
    overflow: bool,
    /// The own write moves the task's run to the task of the same id in
    /// this step, or cancels it there (or the cancel of such a run cancels
    /// the run's own run), and that task is still to be read.
    run: Option<(String, RunWrite)>,
    /// Every task read, as [`unchanged`] holds on it.
    read: Vec<Read>,
}

/// What an own write does to the task of its task's escalated run.
#[derive(Debug, Clone, Copy)]
enum RunWrite {
    /// Escalates: the run is taken over ([`super::escalate::take_over`]).
    TakeOver,
    /// Cancels the escalated task: the run is cancelled with it
    /// ([`super::escalate::cancel_run`]).
    Cancel,
}

impl Cascade {
    /// Starts from `own` on `task` (as read): the write is guarded on
    /// `task`'s dependents as well, so that a dependent linked meanwhile
    /// fails it rather than being missed.
    pub fn new(task: &Task, mut own: Transition, now: Timestamp) -> Self {
        // As the write leaves the task, its guard aside: `task` may be the
        // owner's copy, on which a guard on the stored task (a cancel
        // asked) does not hold; the store checks the guard.
        let after = Transition {
            guard: Vec::new(),
            ..own.clone()
        }
        .apply(Some(task));
        own.guard.push(Cond::Dependents(task.dependents.clone()));
        let run = match super::escalate::escalation(&own) {
            Some(step) => Some((step, RunWrite::TakeOver)),
            None => super::escalate::cancels_run(task, &own).map(|s| (s, RunWrite::Cancel)),
        };
        let frontier = after
            .filter(|a| run.is_some() || cascades(task.state, a.state))
            .into_iter()
            .collect();
        Self {
            run,
            writes: vec![Planned {
                step: task.step.clone(),
                task_id: task.task_id.clone(),
                transition: own,
            }],
            frontier,
            now,
            overflow: false,
            read: Vec::new(),
        }
    }

    /// The tasks (step, id) to read next; empty when the plan is complete.
    pub fn wanted(&self) -> Vec<(String, String)> {
        if let Some((step, _)) = &self.run {
            return vec![(step.clone(), self.writes[0].task_id.clone())];
        }
        if self.overflow {
            return Vec::new();
        }
        self.frontier
            .iter()
            .flat_map(|u| u.dependents.iter().map(|d| (d.clone(), u.task_id.clone())))
            .collect()
    }

    /// The tasks [`Cascade::wanted`] named, in its order (`None`: no such
    /// task).
    pub fn feed(&mut self, read: &[Option<Task>]) {
        let wanted = self.wanted();
        for ((step, task_id), task) in wanted.into_iter().zip(read) {
            if !self
                .read
                .iter()
                .any(|r| r.step == step && r.task_id == task_id)
            {
                self.read.push(Read {
                    guard: unchanged(task.as_ref()),
                    step,
                    task_id,
                });
            }
        }
        self.plan_from(read);
    }

    /// The checks that every task the plan read and writes nothing to is
    /// still as read: what the plan did not write, it decided from them.
    /// A store whose write is not one with its reads holds the write on
    /// them.
    pub fn checks(&self) -> impl Iterator<Item = &Read> {
        self.read.iter().filter(|r| {
            !self
                .writes
                .iter()
                .any(|w| w.step == r.step && w.task_id == r.task_id)
        })
    }

    fn plan_from(&mut self, read: &[Option<Task>]) {
        if let Some((step, write)) = self.run.take() {
            let run = read.first().and_then(Option::as_ref);
            if let RunWrite::Cancel = write {
                self.cancel_run(step, run);
                return;
            }
            // The frontier holds the escalated task as its write leaves it.
            let task = self.frontier.pop().expect("an escalation plans its task");
            let t = super::escalate::take_over(&task, &step, run, self.now);
            if let Some(after) = t.apply(run)
                && run.is_some_and(|r| cascades(r.state, after.state))
            {
                self.frontier.push(after);
            }
            self.writes.push(Planned {
                step,
                task_id: task.task_id,
                transition: t,
            });
            return;
        }
        let frontier = std::mem::take(&mut self.frontier);
        let mut read = read.iter();
        for upstream in &frontier {
            for _ in &upstream.dependents {
                let Some(Some(dep)) = read.next() else {
                    continue;
                };
                // A cycle of steps would visit a task twice.
                if self
                    .writes
                    .iter()
                    .any(|w| w.step == dep.step && w.task_id == dep.task_id)
                {
                    continue;
                }
                let Some(t) = follow(upstream, dep, self.now) else {
                    continue;
                };
                if self.writes.len() > MAX_CASCADE {
                    self.overflow = true;
                    continue;
                }
                if let Some(after) = t.apply(Some(dep))
                    && cascades(dep.state, after.state)
                {
                    self.frontier.push(after);
                }
                self.writes.push(Planned {
                    step: dep.step.clone(),
                    task_id: dep.task_id.clone(),
                    transition: t,
                });
            }
        }
    }

    /// Plans the cancel of `run` (the task of `step`, as read) with the
    /// cancelled task last at the frontier, whose dependents are read
    /// next; and of the run's own escalated run, if it waits for one.
    fn cancel_run(&mut self, step: String, run: Option<&Task>) {
        let (Some(task), Some(run)) = (self.frontier.last(), run) else {
            return;
        };
        // A cycle of escalations would come back to a task planned already.
        if self
            .writes
            .iter()
            .any(|w| w.step == run.step && w.task_id == run.task_id)
        {
            return;
        }
        let Some(t) = super::escalate::cancel_run(task, run, self.now) else {
            return;
        };
        if self.writes.len() > MAX_CASCADE {
            self.overflow = true;
            return;
        }
        self.run = super::escalate::cancels_run(run, &t).map(|s| (s, RunWrite::Cancel));
        if let Some(after) = t.apply(Some(run))
            && cascades(run.state, after.state)
        {
            self.frontier.push(after);
        }
        self.writes.push(Planned {
            step,
            task_id: run.task_id.clone(),
            transition: t,
        });
    }

    /// Every planned write, the own one first.
    pub fn writes(&self) -> &[Planned] {
        &self.writes
    }

    /// The error to give when the plan met more dependents than one write
    /// may carry (nothing is written then).
    pub fn overflow(&self) -> Option<crate::store::StoreError> {
        self.overflow.then(|| {
            let own = &self.writes[0];
            crate::store::StoreError::Service {
                operation: "ending a task with dependents",
                message: format!(
                    "{}/{} has more than {MAX_CASCADE} tasks after it down its chain of steps; one write cannot carry them",
                    own.step, own.task_id
                ),
            }
        })
    }
}

/// Whether a move from `from` to `to` changes what a task's dependents
/// wait for: an end (done, failed, cancelled), or a failed or cancelled
/// task put back. Such a
/// write goes through a [`Cascade`].
pub fn cascades(from: TaskState, to: TaskState) -> bool {
    (matches!(
        to,
        TaskState::Done | TaskState::Failed | TaskState::Cancelled
    ) && from != to)
        || (matches!(from, TaskState::Failed | TaskState::Cancelled)
            && matches!(to, TaskState::Pending | TaskState::Waiting))
}

#[cfg(test)]
mod tests;
