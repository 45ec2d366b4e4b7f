//! Escalation (`load --retry-on 'exit=137:escalate-to=align-large'`): a
//! retry rule moves a task's run to the task of the same id in another
//! step, whose launch template has the bigger instance type.
//!
//! The escalated task stays in its own step, `waiting` for that run the
//! way a dependent waits for its upstream task (it is one of the run's
//! `dependents`), and takes its outcome when it ends: `done`, or `failed`
//! with the run's class and exit code. Its own dependents follow it as
//! usual. The worker that escalates writes both tasks in one atomic write
//! (a [`super::deps::Cascade`] that reads the run's task first); an
//! operator's retry of the escalated task starts it over on its own step.
//! An operator's cancel of the escalated task cancels its run in the same
//! write (asks the run's worker to stop, when it runs), and so on down a
//! run escalated again, unless another task waits for that run too. A new
//! escalation of the task, once retried, takes back a run only asked to
//! stop: the ask is withdrawn.

use serde_json::Value;

use super::deps::{back_to_waiting, cascades, how_it_failed, set_list};
use super::{Change, Cond, Transition, Write, counter_moves, json, ms};
use crate::model::{FailureClass, StepSettings, Task, TaskState};
use crate::schema::attr;
use crate::time::Timestamp;

/// What the end of `run`, the task a retry rule moved `dep`'s run to,
/// does to `dep`: it ends as `run` ended (done, or failed with `run`'s
/// class and exit code), or waits again when `run` is put back.
pub(super) fn take_outcome(run: &Task, dep: &Task, now: Timestamp) -> Option<Transition> {
    let rest: Vec<String> = dep
        .waiting_on
        .iter()
        .filter(|s| **s != run.step)
        .cloned()
        .collect();
    let at = format!("{}/{}", run.step, run.task_id);
    let opt = |name: &'static str, v: Option<Value>| match v {
        Some(v) => Change::Set(name, v),
        None => Change::Remove(name),
    };
    let (name, to, mut changes) = match (run.state, dep.state) {
        (TaskState::Done, TaskState::Waiting) => (
            "escalated run done",
            TaskState::Done,
            vec![
                Change::Set(attr::STATE, json(&TaskState::Done)),
                set_list(attr::WAITING_ON, &rest),
                Change::Set(attr::EXIT_CODE, Value::from(0)),
                Change::Remove(attr::SIGNAL),
                Change::Remove(attr::FAILURE_CLASS),
                Change::Set(
                    attr::REASON,
                    Value::from(format!("escalated; done as {at} (attempt {})", run.attempt)),
                ),
            ],
        ),
        (TaskState::Failed, TaskState::Waiting) => (
            "escalated run failed",
            TaskState::Failed,
            vec![
                Change::Set(attr::STATE, json(&TaskState::Failed)),
                opt(attr::EXIT_CODE, run.exit_code.map(Value::from)),
                opt(attr::SIGNAL, run.signal.map(Value::from)),
                Change::Set(
                    attr::FAILURE_CLASS,
                    json(&run.failure_class.unwrap_or(FailureClass::Exit)),
                ),
                Change::Set(
                    attr::REASON,
                    Value::from(format!(
                        "escalated; {at} failed ({}, attempt {})",
                        how_it_failed(run.exit_code, run.signal, run.failure_class),
                        run.attempt
                    )),
                ),
            ],
        ),
        (TaskState::Cancelled, TaskState::Waiting) => (
            "escalated run cancelled",
            TaskState::Cancelled,
            vec![
                Change::Set(attr::STATE, json(&TaskState::Cancelled)),
                Change::Set(attr::FAILURE_CLASS, json(&FailureClass::Upstream)),
                Change::Set(
                    attr::REASON,
                    Value::from(format!("escalated; {at} was cancelled")),
                ),
                Change::Set(attr::CANCELLED_AT, ms(now)),
            ],
        ),
        // Cancelled with its run, not on its own account.
        (TaskState::Pending | TaskState::Waiting, TaskState::Cancelled)
            if dep.failure_class != Some(FailureClass::Upstream) =>
        {
            return None;
        }
        (TaskState::Pending | TaskState::Waiting, TaskState::Failed | TaskState::Cancelled) => {
            ("escalated run requeued", TaskState::Waiting, {
                let mut c = back_to_waiting();
                c.push(Change::Set(
                    attr::REASON,
                    Value::from(format!("escalated; runs as {at} again")),
                ));
                c
            })
        }
        _ => return None,
    };
    if to != TaskState::Waiting {
        changes.push(Change::Set(attr::FINISHED_AT, ms(now)));
        changes.push(Change::Remove(attr::READY_AT));
        if let Some(uri) = &run.log_uri {
            changes.push(Change::Set(attr::LOG_URI, Value::from(uri.as_str())));
        }
    }
    changes.push(Change::Set(attr::UPDATED_AT, ms(now)));
    Some(Transition {
        name,
        guard: vec![
            Cond::State(dep.state),
            Cond::Attempt(dep.attempt),
            Cond::WaitingOn(dep.waiting_on.clone()),
            Cond::Dependents(dep.dependents.clone()),
        ],
        write: Write::Update(changes),
        to,
        state_at: Some(now),
        counters: counter_moves(Some(dep.state), to),
        expiring: None,
    })
}

/// `t`, one write of a plan, with the expiry of its task's own step (`load
/// --expire-after`, as `settings` have it) when it makes the task done and
/// carries no expiry yet: a task done as its escalated run is. A plan is
/// made without the steps' settings: each store calls this where it writes
/// the task, with that step's settings.
pub fn with_step_expiry(t: &mut Transition, settings: &StepSettings) {
    if t.to != TaskState::Done || t.expiring.is_some() {
        return;
    }
    let finished = t.state_at.unwrap_or_else(Timestamp::now);
    let (Some(at), Write::Update(changes)) = (settings.expiry_of(finished), &mut t.write) else {
        return;
    };
    changes.push(Change::Set(attr::EXPIRES_AT, Value::from(at)));
    t.expiring = Some((at, 1));
}

/// The step an end write moves its task's run to (a retry rule's
/// escalation), if it does.
pub fn escalation(own: &Transition) -> Option<String> {
    let Write::Update(changes) = &own.write else {
        return None;
    };
    changes.iter().find_map(|c| match c {
        Change::Set(name, Value::String(step)) if *name == attr::ESCALATED_TO => Some(step.clone()),
        _ => None,
    })
}

/// Whether the write `own` on a task in state `from` goes through a
/// [`super::deps::Cascade`]: it ends the task, puts it back from failed, or escalates
/// its run.
pub fn needs_plan(from: TaskState, own: &Transition) -> bool {
    cascades(from, own.to) || escalation(own).is_some()
}

/// The step of the run that `own`, a write on `task` (as read), cancels
/// with it: an operator's cancel of a task that waits for its escalated
/// run.
pub fn cancels_run(task: &Task, own: &Transition) -> Option<String> {
    let step = task.escalated_to.as_ref()?;
    (task.state == TaskState::Waiting
        && own.to == TaskState::Cancelled
        && task.waiting_on.contains(step))
    .then(|| step.clone())
}

/// The write on `run` (as read) that the cancel of `task` (as its cancel
/// leaves it), whose escalated run it is, carries: the run's own cancel
/// ([`super::cancel`]: at once, or its worker asked to stop), guarded on
/// `task`'s step being the only one that waits for it. `None` when another
/// task waits for the run too, or the run has ended or been asked already.
pub fn cancel_run(task: &Task, run: &Task, now: Timestamp) -> Option<Transition> {
    if run.dependents != [task.step.as_str()] {
        return None;
    }
    let by = task.cancelled_by.as_deref().unwrap_or("an operator");
    let mut t = super::cancel(run, by, now)?;
    t.guard.push(Cond::Dependents(run.dependents.clone()));
    // Only when cancelled at once: a run asked to stop may still end done.
    if let (TaskState::Cancelled, Write::Update(changes)) = (t.to, &mut t.write) {
        changes.push(Change::Set(
            attr::REASON,
            Value::from(format!(
                "cancelled with {}/{}, whose escalated run this is",
                task.step, task.task_id
            )),
        ));
    }
    Some(t)
}

/// A new task of `run_step` that runs `task` (as its escalation leaves
/// it) from the start.
fn new_run(task: &Task, run_step: &str, reason: String, now: Timestamp) -> Task {
    let mut new = task.clone();
    run_step.clone_into(&mut new.step);
    new.state = TaskState::Pending;
    new.attempt = 0;
    new.failed_attempts = 0;
    new.created_at = now;
    new.updated_at = now;
    new.history.clear();
    new.after.clear();
    new.waiting_on.clear();
    new.dependents = vec![task.step.clone()];
    new.reason = Some(reason);
    new.escalated_to = None;
    for field in [
        &mut new.owner,
        &mut new.output_tail,
        &mut new.log_uri,
        &mut new.retried_by,
        &mut new.cancelled_by,
    ] {
        *field = None;
    }
    new.ready_at = None;
    new.lease_expires_at = None;
    new.started_at = None;
    new.finished_at = None;
    new.exit_code = None;
    new.signal = None;
    new.failure_class = None;
    new.retried_at = None;
    new.cancelled_at = None;
    new
}

/// The write on `run` (the task of step `run_step`, as read; `None`: there
/// is none) that takes over the run of `task` (as its escalation leaves
/// it): a new task with `task`'s script and row, or the existing one run
/// again with them; one that is running or about to is only told to report
/// back (and a running one's cancel asked is withdrawn). Either way `run`
/// lists `task`'s step as a dependent, so that its end ends `task`.
pub fn take_over(task: &Task, run_step: &str, run: Option<&Task>, now: Timestamp) -> Transition {
    let reason = format!(
        "escalated from {}/{}: {}",
        task.step,
        task.task_id,
        task.reason.as_deref().unwrap_or("a retry rule")
    );
    let Some(run) = run else {
        return super::insert(&new_run(task, run_step, reason, now));
    };
    let mut dependents = run.dependents.clone();
    if !dependents.contains(&task.step) {
        dependents.push(task.step.clone());
        dependents.sort();
    }
    let mut guard = vec![
        Cond::State(run.state),
        Cond::Attempt(run.attempt),
        Cond::Dependents(run.dependents.clone()),
    ];
    let mut changes = vec![set_list(attr::DEPENDENTS, &dependents)];
    if matches!(
        run.state,
        TaskState::Running | TaskState::Pending | TaskState::Waiting
    ) {
        // Asked to stop by a cancel of `task` before it was retried (or of
        // the run itself, before this escalation needed it): the ask is
        // withdrawn, so that the retried task does not end cancelled.
        // Its worker goes on, or, if it had stopped the script already,
        // may no longer end the run cancelled, and gives it back.
        if run.state == TaskState::Running && run.cancelled_by.is_some() {
            guard.push(Cond::CancelAsked);
            changes.extend([
                Change::Remove(attr::CANCELLED_BY),
                Change::Remove(attr::CANCELLED_AT),
                Change::Set(attr::UPDATED_AT, ms(now)),
            ]);
        }
        return Transition {
            name: "escalation joins its run",
            guard,
            write: Write::Update(changes),
            to: run.state,
            state_at: None,
            counters: Vec::new(),
            expiring: None,
        };
    }
    // Run again from its own start: an escalation of its own is left
    // behind; upstream tasks it still waits for keep it waiting.
    let waiting_on = super::waiting_on_without_escalation(run);
    let to = if waiting_on.is_empty() {
        TaskState::Pending
    } else {
        TaskState::Waiting
    };
    changes.extend([
        Change::Set(attr::STATE, json(&to)),
        set_list(attr::WAITING_ON, &waiting_on),
        Change::Remove(attr::ESCALATED_TO),
        Change::Set(attr::FAILED_ATTEMPTS, Value::from(0)),
        Change::Set(attr::TASK_SCRIPT, Value::from(task.script.as_str())),
        Change::Set(
            attr::SCRIPT_DIGEST,
            Value::from(task.script_digest.as_str()),
        ),
        Change::Set(attr::ENV, json(&task.env)),
        set_map(attr::COLUMNS, &task.columns),
        Change::Set(attr::REASON, Value::from(reason)),
        Change::Set(attr::UPDATED_AT, ms(now)),
        Change::Remove(attr::READY_AT),
        Change::Remove(attr::FINISHED_AT),
        Change::Remove(attr::EXIT_CODE),
        Change::Remove(attr::SIGNAL),
        Change::Remove(attr::FAILURE_CLASS),
        Change::Remove(attr::OUTPUT_TAIL),
        Change::Remove(attr::CANCELLED_BY),
        Change::Remove(attr::CANCELLED_AT),
    ]);
    let expiring = super::leave_expiry(run, to, &mut changes);
    Transition {
        name: "escalation runs again",
        guard,
        write: Write::Update(changes),
        to,
        state_at: Some(now),
        counters: counter_moves(Some(run.state), to),
        expiring,
    }
}

fn set_map(name: &'static str, map: &std::collections::BTreeMap<String, String>) -> Change {
    if map.is_empty() {
        Change::Remove(name)
    } else {
        Change::Set(name, json(map))
    }
}

#[cfg(test)]
mod tests;
