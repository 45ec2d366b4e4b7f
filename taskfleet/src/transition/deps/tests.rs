use std::collections::BTreeMap;

use super::*;
use crate::model::NewTask;

fn task(step: &str, state: TaskState) -> Task {
    let mut t = crate::store::new_pending_task(
        step,
        "true",
        "d",
        &NewTask {
            task_id: "A".into(),
            line: 2,
            env: BTreeMap::new(),
        },
        Timestamp::from_millis(1_000),
    );
    t.state = state;
    t
}

fn waiting(step: &str, on: &[&str]) -> Task {
    let mut t = task(step, TaskState::Waiting);
    t.after = on.iter().map(|s| (*s).to_owned()).collect();
    t.waiting_on.clone_from(&t.after);
    t
}

const NOW: Timestamp = Timestamp::from_millis(5_000);

#[test]
fn a_new_task_starts_as_its_upstream_tasks_say() {
    let up = |state| Some(task("align", state));
    let start_with = |ups: Vec<(&str, Option<Task>)>| {
        let mut t = task("call", TaskState::Pending);
        let ups: Vec<(String, Option<Task>)> =
            ups.into_iter().map(|(s, t)| (s.to_owned(), t)).collect();
        start(&mut t, &ups, NOW);
        t
    };
    let done = start_with(vec![("align", up(TaskState::Done))]);
    assert_eq!((done.state, done.waiting_on.len()), (TaskState::Pending, 0));
    let running = start_with(vec![("align", up(TaskState::Running))]);
    assert_eq!(running.state, TaskState::Waiting);
    assert_eq!(running.reason, None);
    let mut failed_up = task("align", TaskState::Failed);
    failed_up.exit_code = Some(3);
    failed_up.attempt = 2;
    let failed = start_with(vec![("align", Some(failed_up))]);
    assert_eq!(
        (failed.state, failed.failure_class, failed.reason.as_deref()),
        (
            TaskState::Failed,
            Some(FailureClass::Upstream),
            Some("upstream task align/A failed (exit 3, attempt 2)")
        )
    );
    assert_eq!(
        insert(&failed).counters,
        [(attr::LOADED, 1), (attr::FAILED, 1)]
    );
    let missing = start_with(vec![("align", up(TaskState::Done)), ("trim", None)]);
    assert_eq!(
        (missing.state, missing.waiting_on.clone()),
        (TaskState::Waiting, vec!["trim".to_owned()])
    );
    assert!(missing.reason.unwrap().starts_with("trim/A not loaded"));
}

fn insert(t: &Task) -> Transition {
    crate::transition::insert(t)
}

#[test]
fn an_upstream_end_moves_its_dependent_with_the_counters() {
    let done = task("align", TaskState::Done);
    let t = follow(&done, &waiting("call", &["align"]), NOW).unwrap();
    assert_eq!((t.to, t.state_at), (TaskState::Pending, Some(NOW)));
    assert_eq!(t.counters, [(attr::WAITING, -1)]);
    // One of two upstream steps done: still waiting, same index place.
    let t = follow(&done, &waiting("call", &["align", "trim"]), NOW).unwrap();
    assert_eq!(
        (t.to, t.state_at, t.counters.len()),
        (TaskState::Waiting, None, 0)
    );
    let after = t.apply(Some(&waiting("call", &["align", "trim"]))).unwrap();
    assert_eq!(after.waiting_on, ["trim"]);

    let failed = task("align", TaskState::Failed);
    let t = follow(&failed, &waiting("call", &["align"]), NOW).unwrap();
    assert_eq!(t.to, TaskState::Failed);
    assert_eq!(t.counters, [(attr::WAITING, -1), (attr::FAILED, 1)]);
    let dep = t.apply(Some(&waiting("call", &["align"]))).unwrap();
    assert_eq!(dep.failure_class, Some(FailureClass::Upstream));
    assert_eq!(
        dep.waiting_on,
        ["align"],
        "it still waits for align once retried"
    );

    let retried = task("align", TaskState::Pending);
    let t = follow(&retried, &dep, NOW).unwrap();
    assert_eq!(t.to, TaskState::Waiting);
    assert_eq!(t.counters, [(attr::FAILED, -1), (attr::WAITING, 1)]);
    // A dependent that failed on its own is not the upstream's to move.
    let mut own = dep.clone();
    own.failure_class = Some(FailureClass::Exit);
    assert!(follow(&retried, &own, NOW).is_none());
    // Nor one that does not wait for it.
    assert!(follow(&done, &waiting("call", &["trim"]), NOW).is_none());
}

#[test]
fn a_cascade_guards_the_own_write_on_its_dependents_and_follows_failures_down() {
    let mut running = task("align", TaskState::Running);
    running.owner = Some("w".into());
    running.attempt = 1;
    running.dependents = vec!["call".into()];
    let mut own = crate::transition::claim("w", NOW, std::time::Duration::from_secs(60));
    // Any transition to failed will do for the plan.
    own.to = TaskState::Failed;
    own.write = Write::Update(vec![Change::Set(attr::STATE, json(&TaskState::Failed))]);
    own.guard = vec![Cond::State(TaskState::Running)];
    let mut c = Cascade::new(&running, own, NOW);
    assert!(
        c.writes()[0]
            .transition
            .guard
            .contains(&Cond::Dependents(vec!["call".into()]))
    );
    assert_eq!(c.wanted(), [("call".to_owned(), "A".to_owned())]);
    let mut call = waiting("call", &["align"]);
    call.dependents = vec!["qc".into()];
    c.feed(&[Some(call)]);
    assert_eq!(c.wanted(), [("qc".to_owned(), "A".to_owned())]);
    c.feed(&[Some(waiting("qc", &["call"]))]);
    assert!(c.wanted().is_empty());
    let moved: Vec<(&str, TaskState)> = c
        .writes()
        .iter()
        .map(|w| (w.step.as_str(), w.transition.to))
        .collect();
    assert_eq!(
        moved,
        [
            ("align", TaskState::Failed),
            ("call", TaskState::Failed),
            ("qc", TaskState::Failed)
        ]
    );
}

/// The plan of a failure at the head of a chain of `len` steps after
/// it, each task read as its cascade asks.
fn chain_failure(len: usize) -> Cascade {
    let step = |i: usize| format!("s{i}");
    let mut head = task(&step(0), TaskState::Running);
    head.owner = Some("w".into());
    head.attempt = 1;
    head.dependents = vec![step(1)];
    let mut own = crate::transition::claim("w", NOW, std::time::Duration::from_secs(60));
    own.to = TaskState::Failed;
    own.write = Write::Update(vec![Change::Set(attr::STATE, json(&TaskState::Failed))]);
    own.guard = vec![Cond::State(TaskState::Running)];
    let mut c = Cascade::new(&head, own, NOW);
    let mut level = 1;
    while let [(wanted, _)] = c.wanted().as_slice() {
        assert_eq!(*wanted, step(level));
        let mut dep = waiting(&step(level), &[&step(level - 1)]);
        if level < len {
            dep.dependents = vec![step(level + 1)];
        }
        c.feed(&[Some(dep)]);
        level += 1;
    }
    c
}

#[test]
fn a_cascade_past_its_cap_is_refused_not_cut_short() {
    let whole = chain_failure(MAX_CASCADE);
    assert_eq!(whole.writes().len(), MAX_CASCADE + 1);
    assert_eq!(whole.checks().count(), 0, "every task read is written");
    assert!(whole.overflow().is_none());
    // One more level: the whole write is refused, none of it dropped.
    let over = chain_failure(MAX_CASCADE + 1);
    assert!(over.overflow().is_some(), "{} writes", over.writes().len());
}

#[test]
fn a_cascade_holds_on_every_task_it_read_and_writes_nothing_to() {
    let mut head = task("align", TaskState::Running);
    head.owner = Some("w".into());
    head.attempt = 1;
    // call/A was removed (its step still listed), qc/A waits on another
    // step only, trim/A waits on align.
    head.dependents = vec!["call".into(), "qc".into(), "trim".into()];
    let mut own = crate::transition::claim("w", NOW, std::time::Duration::from_secs(60));
    own.to = TaskState::Done;
    own.write = Write::Update(vec![Change::Set(attr::STATE, json(&TaskState::Done))]);
    own.guard = vec![Cond::State(TaskState::Running)];
    let mut c = Cascade::new(&head, own, NOW);
    let qc = waiting("qc", &["sort"]);
    c.feed(&[None, Some(qc.clone()), Some(waiting("trim", &["align"]))]);
    assert!(c.wanted().is_empty());
    let written: Vec<&str> = c.writes().iter().map(|w| w.step.as_str()).collect();
    assert_eq!(written, ["align", "trim"]);
    let checks: Vec<(&str, &[Cond])> = c
        .checks()
        .map(|r| (r.step.as_str(), r.guard.as_slice()))
        .collect();
    assert_eq!(
        checks,
        [
            ("call", &[Cond::Absent][..]),
            (
                "qc",
                &[
                    Cond::State(TaskState::Waiting),
                    Cond::Attempt(qc.attempt),
                    Cond::WaitingOn(vec!["sort".into()]),
                ][..]
            ),
        ]
    );
    // What the checks ask holds on the tasks as read, and fails on a task
    // loaded since.
    assert!(Cond::Absent.holds(None));
    assert!(!Cond::Absent.holds(Some(&waiting("call", &["align"]))));
}
