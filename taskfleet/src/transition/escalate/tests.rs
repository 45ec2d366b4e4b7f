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
