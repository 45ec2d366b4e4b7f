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
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::NewTask;
    use crate::transition::deps::{Cascade, follow};

    const NOW: Timestamp = Timestamp::from_millis(5_000);

    fn task(step: &str, state: TaskState) -> Task {
        let mut t = crate::store::new_pending_task(
            step,
            "true",
            "d",
            &NewTask {
                task_id: "A".into(),
                line: 2,
                env: BTreeMap::from([("SAMPLE".into(), "A".into())]),
            },
            Timestamp::from_millis(1_000),
        );
        t.state = state;
        t
    }

    /// A running task of align and its end write escalating to
    /// align-large after exit 137.
    fn escalating() -> (Task, Transition) {
        let mut running = task("align", TaskState::Running);
        running.owner = Some("w".into());
        running.attempt = 2;
        running.dependents = vec!["call".into()];
        let record = crate::model::AttemptRecord {
            attempt: 2,
            owner: "w".into(),
            started_at: NOW,
            finished_at: NOW,
            outcome: TaskState::Waiting,
            exit_code: Some(137),
            signal: None,
            failure_class: Some(FailureClass::Exit),
            log_uri: None,
            provenance: None,
        };
        let own = crate::transition::finish(
            &running,
            &crate::transition::Finish {
                next: TaskState::Waiting,
                counts_as_failure: true,
                ready_at: NOW,
                record,
                output_tail: None,
                escalate_to: Some("align-large".into()),
                expires_at: None,
            },
        );
        assert_eq!(escalation(&own).as_deref(), Some("align-large"));
        assert!(needs_plan(TaskState::Running, &own));
        assert_eq!(own.counters, [(attr::WAITING, 1)]);
        (running, own)
    }

    /// The escalated task as its write leaves it, and its run's new task.
    fn escalated() -> (Task, Task) {
        let (running, own) = escalating();
        let mut c = Cascade::new(&running, own, NOW);
        c.feed(&[None]);
        let Write::Put(run) = &c.writes()[1].transition.write else {
            panic!("a new run is put")
        };
        let after = c.writes()[0].transition.apply(Some(&running)).unwrap();
        (after, (**run).clone())
    }

    #[test]
    fn an_escalation_writes_the_task_waiting_and_its_run_on_the_other_step() {
        let (running, own) = escalating();
        let mut c = Cascade::new(&running, own, NOW);
        // The run's task is read first; none yet: a new one is written.
        assert_eq!(c.wanted(), [("align-large".to_owned(), "A".to_owned())]);
        c.feed(&[None]);
        assert!(c.wanted().is_empty());
        let new = &c.writes()[1];
        let Write::Put(run) = &new.transition.write else {
            panic!("{new:?}")
        };
        assert_eq!(
            (
                run.step.as_str(),
                run.state,
                run.attempt,
                run.dependents.clone()
            ),
            (
                "align-large",
                TaskState::Pending,
                0,
                vec!["align".to_owned()]
            )
        );
        assert_eq!(run.env, running.env);
        assert_eq!(new.transition.counters, [(attr::LOADED, 1)]);
        let escalated = c.writes()[0].transition.apply(Some(&running)).unwrap();
        assert_eq!(
            (escalated.state, escalated.waiting_on.clone()),
            (TaskState::Waiting, vec!["align-large".to_owned()])
        );
        assert_eq!(
            escalated.reason.as_deref(),
            Some("escalated to align-large/A after exit 137 (attempt 2)")
        );
    }

    #[test]
    fn an_escalated_run_is_run_again_or_joined_and_its_end_ends_the_task() {
        let (escalated, run) = escalated();
        // A run that failed before is run again, and stays linked.
        let mut failed_run = run.clone();
        failed_run.state = TaskState::Failed;
        failed_run.attempt = 1;
        let again = take_over(&escalated, "align-large", Some(&failed_run), NOW);
        assert_eq!(again.to, TaskState::Pending);
        assert_eq!(again.counters, [(attr::FAILED, -1)]);
        // A running one is only joined.
        let mut busy = failed_run.clone();
        busy.state = TaskState::Running;
        busy.dependents.clear();
        let join = take_over(&escalated, "align-large", Some(&busy), NOW);
        assert_eq!((join.to, join.state_at), (TaskState::Running, None));
        assert_eq!(join.apply(Some(&busy)).unwrap().dependents, ["align"]);

        // The run's end ends the escalated task, and on down its chain.
        let mut done_run = failed_run.clone();
        done_run.state = TaskState::Done;
        done_run.attempt = 3;
        let t = follow(&done_run, &escalated, NOW).unwrap();
        assert_eq!(
            (t.to, t.counters.clone()),
            (TaskState::Done, vec![(attr::WAITING, -1), (attr::DONE, 1)])
        );
        let done = t.apply(Some(&escalated)).unwrap();
        assert!(done.waiting_on.is_empty());
        assert_eq!(
            done.reason.as_deref(),
            Some("escalated; done as align-large/A (attempt 3)")
        );
        let mut lost_run = failed_run.clone();
        lost_run.exit_code = Some(137);
        lost_run.failure_class = Some(FailureClass::Exit);
        let t = follow(&lost_run, &escalated, NOW).unwrap();
        let failed = t.apply(Some(&escalated)).unwrap();
        assert_eq!(
            (failed.state, failed.failure_class, failed.exit_code),
            (TaskState::Failed, Some(FailureClass::Exit), Some(137))
        );
        assert!(cascades(TaskState::Waiting, TaskState::Failed));
        // An operator's retry starts it over on its own step.
        let retried = crate::transition::retry(&failed, failed.attempt, "me", NOW)
            .apply(Some(&failed))
            .unwrap();
        assert_eq!(
            (
                retried.state,
                retried.escalated_to.clone(),
                retried.waiting_on.len()
            ),
            (TaskState::Pending, None, 0)
        );
    }

    #[test]
    fn a_cancel_of_the_escalated_task_cancels_its_run_unless_another_waits_for_it() {
        let (escalated, run) = escalated();
        let own = crate::transition::cancel(&escalated, "ana", NOW).unwrap();
        assert_eq!(
            cancels_run(&escalated, &own).as_deref(),
            Some("align-large")
        );
        let plan = |run: &Task| {
            let own = crate::transition::cancel(&escalated, "ana", NOW).unwrap();
            let mut c = Cascade::new(&escalated, own, NOW);
            assert_eq!(c.wanted(), [("align-large".to_owned(), "A".to_owned())]);
            c.feed(&[Some(run.clone())]);
            c
        };
        let c = plan(&run);
        let t = &c.writes()[1];
        assert_eq!(
            (
                t.step.as_str(),
                t.transition.to,
                t.transition.counters.clone()
            ),
            (
                "align-large",
                TaskState::Cancelled,
                vec![(attr::CANCELLED, 1)]
            )
        );
        let cancelled = t.transition.apply(Some(&run)).unwrap();
        assert_eq!(cancelled.cancelled_by.as_deref(), Some("ana"));
        assert_eq!(
            cancelled.reason.as_deref(),
            Some("cancelled with align/A, whose escalated run this is")
        );
        // Then the dependents of both: call's task is cancelled with its
        // upstream one; the run's only dependent is the task itself.
        assert_eq!(
            c.wanted(),
            [
                ("call".to_owned(), "A".to_owned()),
                ("align".to_owned(), "A".to_owned())
            ]
        );
        // Running: its worker is asked to stop.
        let mut busy = run.clone();
        busy.state = TaskState::Running;
        busy.attempt = 1;
        let c = plan(&busy);
        assert_eq!(
            (
                c.writes()[1].transition.to,
                c.writes()[1].transition.counters.len()
            ),
            (TaskState::Running, 0)
        );
        let asked = c.writes()[1].transition.apply(Some(&busy)).unwrap();
        assert!(asked.cancelled_by.is_some());
        assert_eq!(asked.reason, busy.reason, "asked, not cancelled yet");
        // Another step's task waits for the same run: it is left alone.
        let mut shared = run.clone();
        shared.dependents.push("realign".into());
        assert_eq!(plan(&shared).writes().len(), 1);
        // A plain cancel of a task with no escalated run reads nothing more.
        let mut unescalated = escalated.clone();
        unescalated.escalated_to = None;
        unescalated.waiting_on = vec!["qc".into()];
        let own = crate::transition::cancel(&unescalated, "ana", NOW).unwrap();
        assert_eq!(cancels_run(&unescalated, &own), None);
    }

    #[test]
    fn a_cancel_follows_a_run_escalated_again_down_to_the_last() {
        // align/A waits for align-large/A, which waits for align-xlarge/A.
        let (escalated, mut large) = escalated();
        large.state = TaskState::Waiting;
        large.attempt = 1;
        large.escalated_to = Some("align-xlarge".into());
        large.waiting_on = vec!["align-xlarge".into()];
        let mut xlarge = large.clone();
        xlarge.step = "align-xlarge".into();
        xlarge.state = TaskState::Pending;
        xlarge.attempt = 0;
        xlarge.escalated_to = None;
        xlarge.waiting_on.clear();
        xlarge.dependents = vec!["align-large".into()];

        let own = crate::transition::cancel(&escalated, "ana", NOW).unwrap();
        let mut c = Cascade::new(&escalated, own, NOW);
        c.feed(&[Some(large.clone())]);
        assert_eq!(c.wanted(), [("align-xlarge".to_owned(), "A".to_owned())]);
        c.feed(&[Some(xlarge.clone())]);
        let cancelled: Vec<(&str, TaskState)> = c
            .writes()
            .iter()
            .map(|w| (w.step.as_str(), w.transition.to))
            .collect();
        assert_eq!(
            cancelled,
            [
                ("align", TaskState::Cancelled),
                ("align-large", TaskState::Cancelled),
                ("align-xlarge", TaskState::Cancelled)
            ]
        );
        let last = c.writes()[2].transition.apply(Some(&xlarge)).unwrap();
        assert_eq!(
            last.reason.as_deref(),
            Some("cancelled with align-large/A, whose escalated run this is")
        );
        // A cycle of escalations (xlarge escalated back to align) ends
        // where it began.
        let mut cycle = xlarge.clone();
        cycle.state = TaskState::Waiting;
        cycle.attempt = 1;
        cycle.escalated_to = Some("align".into());
        cycle.waiting_on = vec!["align".into()];
        // (which joined align/A's run, so align/A's only dependent).
        let mut head = escalated.clone();
        head.dependents = vec!["align-xlarge".into()];
        let own = crate::transition::cancel(&head, "ana", NOW).unwrap();
        let mut round = Cascade::new(&head, own, NOW);
        round.feed(&[Some(large.clone())]);
        round.feed(&[Some(cycle)]);
        assert_eq!(round.wanted()[0], ("align".to_owned(), "A".to_owned()));
        round.feed(&[Some(head)]);
        assert_eq!(round.writes().len(), 3);
        let rest = round.wanted().len();
        round.feed(&vec![None; rest]);
        assert!(round.wanted().is_empty(), "the plan ends");
        assert_eq!(round.writes().len(), 3);
        // Then the dependents of all three; those of the runs are the
        // tasks already written.
        assert_eq!(
            c.wanted(),
            [
                ("call".to_owned(), "A".to_owned()),
                ("align".to_owned(), "A".to_owned()),
                ("align-large".to_owned(), "A".to_owned())
            ]
        );
    }
}
