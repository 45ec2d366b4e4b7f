//! Each transition on its own, through the reference semantics both
//! stores follow.

use std::collections::BTreeMap;

use super::*;
use crate::model::{AttemptRecord, FailureClass};
use crate::schema;

fn t(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn pending() -> Task {
    crate::store::new_pending_task(
        "align",
        "true",
        "d",
        &crate::model::NewTask {
            task_id: "A".into(),
            line: 2,
            env: BTreeMap::new(),
        },
        t(1_000),
    )
}

fn record(attempt: u32, class: Option<FailureClass>, at: i64) -> AttemptRecord {
    AttemptRecord {
        attempt,
        owner: "w".into(),
        started_at: t(at),
        finished_at: t(at),
        outcome: TaskState::Pending,
        exit_code: class.map(|_| 1),
        signal: None,
        failure_class: class,
        log_uri: None,
        provenance: None,
    }
}

fn claimed(task: &Task, owner: &str, now: i64) -> Task {
    claim(owner, t(now), Duration::from_secs(10))
        .apply(Some(task))
        .expect("claimable")
}

#[test]
fn a_claim_takes_a_ready_pending_task_and_raises_the_attempt() {
    let task = pending();
    let c = claimed(&task, "w1", 2_000);
    assert_eq!(
        (c.state, c.attempt, c.owner.as_deref()),
        (TaskState::Running, 1, Some("w1"))
    );
    assert_eq!(c.lease_expires_at, Some(t(12_000)));
    // Not twice, and not before its ready time.
    assert!(
        claim("w2", t(2_000), Duration::from_secs(10))
            .apply(Some(&c))
            .is_none()
    );
    let mut later = task.clone();
    later.ready_at = Some(t(5_000));
    assert!(
        claim("w2", t(4_999), Duration::from_secs(10))
            .apply(Some(&later))
            .is_none()
    );
    assert!(
        claim("w2", t(5_000), Duration::from_secs(10))
            .apply(Some(&later))
            .is_some()
    );
}

#[test]
fn a_retry_keeps_its_ready_time_in_ready_at() {
    let c = claimed(&pending(), "w1", 2_000);
    let f = Finish {
        next: TaskState::Pending,
        counts_as_failure: true,
        ready_at: t(9_000),
        record: record(1, Some(FailureClass::Exit), 3_000),
        output_tail: Some("x".into()),
        escalate_to: None,
        expires_at: None,
    };
    let tr = finish(&c, &f);
    let after = tr.apply(Some(&c)).unwrap();
    assert_eq!(
        (after.ready_at, after.updated_at),
        (Some(t(9_000)), t(3_000))
    );
    assert_eq!((tr.to, tr.state_at), (TaskState::Pending, Some(t(9_000))));
    assert_eq!(after.failed_attempts, 1);
    assert!(tr.counters.is_empty());
}

#[test]
fn writes_after_a_claim_are_fenced_on_state_owner_and_attempt() {
    let c = claimed(&pending(), "w1", 2_000);
    let mut other = c.clone();
    other.owner = Some("w2".into());
    assert!(
        heartbeat(&other, t(20_000), t(3_000))
            .apply(Some(&c))
            .is_none()
    );
    let mut older = c.clone();
    older.attempt = 0;
    assert!(
        heartbeat(&older, t(20_000), t(3_000))
            .apply(Some(&c))
            .is_none()
    );
    assert!(heartbeat(&c, t(20_000), t(3_000)).apply(Some(&c)).is_some());
}

#[test]
fn a_reclaim_needs_the_lease_still_expired_even_on_the_last_attempt() {
    let c = claimed(&pending(), "w1", 2_000); // lease until 12 s
    let now = 12_000 + CLOCK_SKEW_MARGIN.as_millis() as i64 + 1;
    for max in [1, 3] {
        let tr = reclaim(&c, "w2", t(now), Duration::from_secs(10), &limit(max));
        assert!(tr.apply(Some(&c)).is_some(), "{}", tr.name);
        // A heartbeat lands between the read and the write.
        let renewed = heartbeat(&c, t(now + 10_000), t(now))
            .apply(Some(&c))
            .unwrap();
        assert!(
            tr.apply(Some(&renewed)).is_none(),
            "{} overruled a heartbeat",
            tr.name
        );
    }
    let last = reclaim(&c, "w2", t(now), Duration::from_secs(10), &limit(1));
    let failed = last.apply(Some(&c)).unwrap();
    assert_eq!(
        (failed.state, failed.failure_class, failed.failed_attempts),
        (TaskState::Failed, Some(FailureClass::Lost), 1)
    );
    assert_eq!(last.counters, vec![(attr::FAILED, 1)]);
}

#[test]
fn replace_keeps_the_attempt_and_history_and_resets_the_budget() {
    let c = claimed(&pending(), "w1", 2_000);
    let f = Finish {
        next: TaskState::Failed,
        counts_as_failure: true,
        ready_at: t(3_000),
        record: record(1, Some(FailureClass::Exit), 3_000),
        output_tail: None,
        escalate_to: None,
        expires_at: None,
    };
    let failed = finish(&c, &f).apply(Some(&c)).unwrap();
    let mut new = pending();
    new.script = "echo v2".into();
    let tr = replace(&failed, &new, t(4_000));
    let r = tr.apply(Some(&failed)).unwrap();
    assert_eq!(
        (
            r.state,
            r.attempt,
            r.failed_attempts,
            r.history.len(),
            r.script.as_str()
        ),
        (TaskState::Pending, 1, 0, 1, "echo v2")
    );
    assert_eq!(tr.counters, vec![(attr::FAILED, -1)]);
    // The next claim is attempt 2, never 1 again.
    assert_eq!(claimed(&r, "w2", 5_000).attempt, 2);
}

#[test]
fn inserts_never_overwrite_and_count_as_loaded() {
    let task = pending();
    let tr = insert(&task);
    assert!(tr.apply(None).is_some());
    assert!(tr.apply(Some(&task)).is_none());
    assert_eq!(tr.counters, vec![(attr::LOADED, 1)]);
}

#[test]
fn a_loads_tasks_are_spread_over_the_second_before_it_in_the_pending_index() {
    let mut places = std::collections::BTreeSet::new();
    for i in 0..2_000 {
        let mut task = pending();
        task.task_id = format!("S{i:07}");
        let at = insert(&task).state_at.unwrap().as_millis();
        assert!(
            (1_000 - 999..=1_000).contains(&at),
            "{} is placed at {at}, not within the second before its load at 1000",
            task.task_id
        );
        places.insert((crate::schema::shard_of(&task.task_id, 16), at));
    }
    // Within each of 16 shards, most of its 125 tasks have a place of
    // their own: a worker starting at a random time meets few others.
    assert!(places.len() > 1_600, "{} distinct places", places.len());
    // A retry's ready time is kept as it is.
    let mut later = pending();
    later.ready_at = Some(t(9_000));
    assert_eq!(insert(&later).state_at, Some(t(9_000)));
}

#[test]
fn a_finish_is_trimmed_to_fit_the_item_limit() {
    let mut c = claimed(&pending(), "w1", 2_000);
    c.env.insert("BIG".into(), "x".repeat(300 * 1024));
    c.history = (0..9)
        .map(|i| AttemptRecord {
            provenance: Some("p".repeat(4096)),
            ..record(i, Some(FailureClass::Exit), 1_000)
        })
        .collect();
    let f = Finish {
        next: TaskState::Done,
        counts_as_failure: false,
        ready_at: t(3_000),
        record: record(1, None, 3_000),
        output_tail: Some("y".repeat(200 * 1024)),
        escalate_to: None,
        expires_at: None,
    };
    let tr = finish(&c, &f);
    let after = tr.apply(Some(&c)).unwrap();
    assert!(schema::task_size(&after) <= schema::MAX_WRITE_BYTES);
    assert!(after.output_tail.as_deref().unwrap().ends_with('y'));
    assert_eq!(after.state, TaskState::Done);
    assert_eq!(tr.guard, fence(&c));
}

#[test]
fn a_reclaim_of_a_task_at_the_item_limit_stays_within_it() {
    let mut c = claimed(&pending(), "w1", 2_000);
    c.history = (0..10)
        .map(|i| AttemptRecord {
            provenance: Some("p".repeat(6 * 1024)),
            ..record(i, Some(FailureClass::Exit), 1_000)
        })
        .collect();
    // Filled up to 100 bytes short of the limit.
    c.env.insert("BIG".into(), String::new());
    let room = schema::MAX_WRITE_BYTES - 100 - schema::task_size(&c);
    c.env.insert("BIG".into(), "x".repeat(room));
    assert_eq!(schema::task_size(&c), schema::MAX_WRITE_BYTES - 100);
    let now = t(12_000 + CLOCK_SKEW_MARGIN.as_millis() as i64 + 1);
    for max in [1, 3] {
        let after = reclaim(&c, "w2", now, Duration::from_secs(10), &limit(max))
            .apply(Some(&c))
            .unwrap();
        assert!(
            schema::task_size(&after) <= schema::MAX_WRITE_BYTES,
            "max {max}"
        );
        assert_eq!(
            after.history.last().unwrap().failure_class,
            Some(FailureClass::Lost)
        );
    }
}

fn limit(max_attempts: u32) -> crate::model::StepSettings {
    crate::model::StepSettings {
        max_attempts,
        ..crate::model::StepSettings::default()
    }
}

#[test]
fn a_rule_may_make_lost_attempts_free_or_give_them_their_own_limit() {
    let c = claimed(&pending(), "w1", 2_000);
    let now = t(12_000 + CLOCK_SKEW_MARGIN.as_millis() as i64 + 1);
    let with = |rule: &str, max_attempts: u32| crate::model::StepSettings {
        rules: vec![crate::rules::parse(rule, false).unwrap()],
        ..limit(max_attempts)
    };
    // Free: taken again on what would be the last attempt, none used.
    let free = reclaim(
        &c,
        "w2",
        now,
        Duration::from_secs(10),
        &with("class=lost:free", 1),
    );
    let taken = free.apply(Some(&c)).unwrap();
    assert_eq!(
        (taken.state, taken.failed_attempts, taken.attempt),
        (TaskState::Running, 0, c.attempt + 1)
    );
    // Its own limit: one lost attempt fails it although the step allows 5.
    let strict = reclaim(
        &c,
        "w2",
        now,
        Duration::from_secs(10),
        &with("class=lost:attempts=1", 5),
    );
    assert_eq!(strict.apply(Some(&c)).unwrap().state, TaskState::Failed);
    // No rule: the step's limit.
    let plain = reclaim(&c, "w2", now, Duration::from_secs(10), &limit(5));
    assert_eq!(plain.apply(Some(&c)).unwrap().failed_attempts, 1);
}

#[test]
fn a_replace_holds_only_while_the_task_waits_for_what_it_waited_for_when_read() {
    let mut read = pending();
    read.state = TaskState::Waiting;
    read.after = vec!["align".into(), "trim".into()];
    read.waiting_on.clone_from(&read.after);
    let tr = replace(&read, &pending(), t(3_000));
    // align/A ends done in between: the task now waits for trim alone.
    let mut stored = read.clone();
    stored.waiting_on = vec!["trim".into()];
    assert!(
        tr.apply(Some(&stored)).is_none(),
        "the replace would write align back as awaited"
    );
    assert_eq!(tr.apply(Some(&read)).unwrap().waiting_on, ["align", "trim"]);
}

fn finish_to(task: &Task, next: TaskState, class: Option<FailureClass>) -> Transition {
    finish(
        task,
        &Finish {
            next,
            counts_as_failure: class.is_some() && next != TaskState::Cancelled,
            ready_at: t(5_000),
            record: AttemptRecord {
                outcome: next,
                ..record(task.attempt, class, 4_000)
            },
            output_tail: None,
            escalate_to: None,
            expires_at: None,
        },
    )
}

#[test]
fn a_cancel_sets_a_pending_task_aside_and_counts_it() {
    let task = pending();
    let tr = cancel(&task, "ana@lab", t(2_000)).expect("pending tasks are cancellable");
    let after = tr.apply(Some(&task)).unwrap();
    assert_eq!(after.state, TaskState::Cancelled);
    assert_eq!(after.cancelled_by.as_deref(), Some("ana@lab"));
    assert_eq!(tr.counters, vec![(attr::CANCELLED, 1)]);
    // Not claimable any more, and not cancelled twice.
    assert!(
        claim("w1", t(3_000), Duration::from_secs(10))
            .apply(Some(&after))
            .is_none()
    );
    assert!(cancel(&after, "ana@lab", t(3_000)).is_none());
    // Claimed between the read and the write: left alone.
    let c = claimed(&task, "w1", 1_500);
    assert!(tr.apply(Some(&c)).is_none());
    // Put back by a retry: pending, the marks gone, the count moved back.
    let back = retry(&after, after.attempt, "ana@lab", t(4_000));
    let again = back.apply(Some(&after)).unwrap();
    assert_eq!(
        (again.state, again.cancelled_by),
        (TaskState::Pending, None)
    );
    assert_eq!(back.counters, vec![(attr::CANCELLED, -1)]);
}

#[test]
fn a_cancel_of_a_running_task_stops_its_owner_at_the_next_renewal() {
    let c = claimed(&pending(), "w1", 2_000);
    let ask = cancel(&c, "ana@lab", t(3_000)).expect("running tasks are cancellable");
    assert!(ask.counters.is_empty());
    let asked = ask.apply(Some(&c)).unwrap();
    // Still the owner's: running, same attempt, only marked.
    assert_eq!(
        (asked.state, asked.attempt, asked.owner.as_deref()),
        (TaskState::Running, 1, Some("w1"))
    );
    assert!(cancel(&asked, "bo@lab", t(3_500)).is_none(), "asked once");
    assert!(cancel_asked(&c, Some(&asked)));
    assert!(!cancel_asked(&c, Some(&c)));
    // The renewal fails on the mark; so do a retry, a failure, a release.
    assert!(
        heartbeat(&c, t(20_000), t(4_000))
            .apply(Some(&asked))
            .is_none()
    );
    for (next, class) in [
        (TaskState::Pending, Some(FailureClass::Exit)),
        (TaskState::Failed, Some(FailureClass::Exit)),
        (TaskState::Pending, Some(FailureClass::Interrupted)),
    ] {
        assert!(finish_to(&c, next, class).apply(Some(&asked)).is_none());
    }
    // Work that was done stays done; the cancelled end is taken.
    assert!(
        finish_to(&c, TaskState::Done, None)
            .apply(Some(&asked))
            .is_some()
    );
    let end = finish_to(&c, TaskState::Cancelled, Some(FailureClass::Cancelled));
    let ended = end.apply(Some(&asked)).unwrap();
    assert_eq!(
        (ended.state, ended.failed_attempts),
        (TaskState::Cancelled, 0)
    );
    assert_eq!(ended.owner, None);
    assert_eq!(end.counters, vec![(attr::CANCELLED, 1)]);
    // Its owner died instead: the reclaim ends it cancelled, not run again.
    let now = 12_000 + CLOCK_SKEW_MARGIN.as_millis() as i64 + 1;
    let tr = reclaim(&asked, "w2", t(now), Duration::from_secs(10), &limit(3));
    let reclaimed = tr.apply(Some(&asked)).unwrap();
    assert_eq!(
        (
            reclaimed.state,
            reclaimed.owner.as_deref(),
            reclaimed.attempt
        ),
        (TaskState::Cancelled, None, 1)
    );
    assert_eq!(tr.counters, vec![(attr::CANCELLED, 1)]);
}

#[test]
fn what_waits_for_a_cancelled_task_is_cancelled_and_comes_back_with_it() {
    let mut up = pending();
    up.dependents = vec!["qc".into()];
    let mut dep = pending();
    dep.step = "qc".into();
    dep.state = TaskState::Waiting;
    dep.after = vec!["align".into()];
    dep.waiting_on = vec!["align".into()];
    let gone = cancel(&up, "ana@lab", t(2_000))
        .unwrap()
        .apply(Some(&up))
        .unwrap();
    assert!(deps::cascades(up.state, gone.state));
    let f = deps::follow(&gone, &dep, t(2_000)).expect("the dependent follows");
    let cancelled = f.apply(Some(&dep)).unwrap();
    assert_eq!(
        (cancelled.state, cancelled.failure_class),
        (TaskState::Cancelled, Some(FailureClass::Upstream))
    );
    assert_eq!(f.counters, vec![(attr::WAITING, -1), (attr::CANCELLED, 1)]);
    let back = retry(&gone, gone.attempt, "ana@lab", t(3_000))
        .apply(Some(&gone))
        .unwrap();
    assert!(deps::cascades(gone.state, back.state));
    let f = deps::follow(&back, &cancelled, t(3_000)).expect("it waits again");
    let waits = f.apply(Some(&cancelled)).unwrap();
    assert_eq!(
        (waits.state, waits.cancelled_by),
        (TaskState::Waiting, None)
    );
}

#[test]
fn a_retry_of_a_task_that_changed_since_it_was_listed_is_left_alone() {
    // Listed failed, read pending (put back meanwhile): no write, no panic.
    let task = pending();
    assert!(
        retry(&task, 0, "ana@lab", t(2_000))
            .apply(Some(&task))
            .is_none()
    );
}

#[test]
fn a_cancel_asked_after_a_reclaim_read_the_task_is_not_run_over() {
    let c = claimed(&pending(), "w1", 2_000);
    let now = 12_000 + CLOCK_SKEW_MARGIN.as_millis() as i64 + 1;
    let tr = reclaim(&c, "w2", t(now), Duration::from_secs(10), &limit(3));
    let asked = cancel(&c, "ana@lab", t(now))
        .unwrap()
        .apply(Some(&c))
        .unwrap();
    assert!(
        tr.apply(Some(&asked)).is_none(),
        "the claim would clear the mark"
    );
}

#[test]
fn done_work_drops_a_late_cancel_mark_and_new_dependents_of_a_cancelled_task_start_cancelled() {
    let c = claimed(&pending(), "w1", 2_000);
    let asked = cancel(&c, "ana@lab", t(3_000))
        .unwrap()
        .apply(Some(&c))
        .unwrap();
    let done = finish_to(&c, TaskState::Done, None)
        .apply(Some(&asked))
        .unwrap();
    assert_eq!((done.state, done.cancelled_by), (TaskState::Done, None));

    let up = cancel(&pending(), "ana@lab", t(2_000))
        .unwrap()
        .apply(Some(&pending()))
        .unwrap();
    let mut dep = pending();
    dep.step = "qc".into();
    deps::start(&mut dep, &[("align".into(), Some(up))], t(3_000));
    assert_eq!(
        (dep.state, dep.failure_class),
        (TaskState::Cancelled, Some(FailureClass::Upstream))
    );
    assert_eq!(
        insert(&dep).counters,
        vec![(attr::LOADED, 1), (attr::CANCELLED, 1)]
    );
}

#[test]
fn a_task_cancelled_on_its_own_account_is_not_brought_back_by_its_upstream() {
    // Failed because its upstream failed, put back, then cancelled itself.
    let mut dep = pending();
    dep.step = "qc".into();
    dep.failure_class = Some(FailureClass::Upstream);
    dep.after = vec!["align".into()];
    dep.waiting_on = vec!["align".into()];
    dep.state = TaskState::Waiting;
    let cancelled = cancel(&dep, "ana@lab", t(2_000))
        .unwrap()
        .apply(Some(&dep))
        .unwrap();
    assert_eq!(cancelled.failure_class, None);
    let up = pending(); // the upstream task, put back to pending
    assert!(deps::follow(&up, &cancelled, t(3_000)).is_none());
    // Nor when the run it was escalated to is put back.
    let mut escalated = cancelled.clone();
    escalated.escalated_to = Some("align".into());
    assert!(deps::follow(&up, &escalated, t(3_000)).is_none());
}

#[test]
fn a_done_task_is_counted_under_its_expiry_and_takes_it_along_when_it_leaves_done() {
    let held = claimed(&pending(), "w", 2_000);
    let mut end = Finish {
        next: TaskState::Done,
        counts_as_failure: false,
        ready_at: t(5_000),
        record: AttemptRecord {
            outcome: TaskState::Done,
            ..record(held.attempt, None, 4_000)
        },
        output_tail: None,
        escalate_to: None,
        expires_at: Some(90),
    };
    let tr = finish(&held, &end);
    assert_eq!(tr.expiring, Some((90, 1)));
    let done = tr.apply(Some(&held)).unwrap();
    assert_eq!(done.expires_at, Some(90));
    // Only a done end expires.
    end.next = TaskState::Failed;
    let failed = finish(&held, &end);
    assert_eq!(failed.expiring, None);
    assert_eq!(failed.apply(Some(&held)).unwrap().expires_at, None);

    assert_eq!(prune(&done).expiring, Some((90, -1)));
    let replaced = replace(&done, &pending(), t(6_000));
    assert_eq!(replaced.expiring, Some((90, -1)));
    assert_eq!(replaced.apply(Some(&done)).unwrap().expires_at, None);
    let run_again = escalate::take_over(&pending(), "align-large", Some(&done), t(6_000));
    assert_eq!(run_again.to, TaskState::Pending);
    assert_eq!(run_again.expiring, Some((90, -1)));
    assert_eq!(run_again.apply(Some(&done)).unwrap().expires_at, None);
    // A task that never expired has no slot to leave.
    let kept = Task {
        expires_at: None,
        ..done
    };
    assert_eq!(prune(&kept).expiring, None);
}

#[test]
fn expiry_is_rounded_up_to_a_thirtieth_of_the_time_kept_at_most_a_day() {
    let keep = |d: Duration| crate::model::StepSettings {
        expire_after: Some(d),
        ..crate::model::StepSettings::default()
    };
    let finished = t(1_000_000_500); // 1,000,000.5 s
    let day = 86_400;
    let at = keep(Duration::from_secs(90 * day))
        .expiry_of(finished)
        .unwrap();
    assert_eq!(at % day as i64, 0, "a day's slot");
    assert!((1_000_000 + 90 * day as i64..1_000_000 + 91 * day as i64 + 1).contains(&at));
    let at = keep(Duration::from_secs(300)).expiry_of(finished).unwrap();
    assert_eq!((at % 10, (1_000_300..=1_000_310).contains(&at)), (0, true));
    let at = keep(Duration::from_secs(5)).expiry_of(finished).unwrap();
    assert_eq!(
        at, 1_000_006,
        "one-second slots: after the finish's second ends"
    );
    assert_eq!(
        crate::model::StepSettings::default().expiry_of(finished),
        None
    );
}
