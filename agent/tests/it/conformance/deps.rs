//! Tasks that wait for the task of the same id in another step (`load
//! --after`): what a dependent starts as, and what the end of its upstream
//! task does to it, written by whoever ends the upstream task.

use std::time::Duration;

use taskfleet::model::{FailureClass, TaskState};
use taskfleet::store::{Fence, SettingsChange, TaskStore};
use taskfleet::time::Timestamp;
use testkit::{TestStore, load_text};

use super::{claimed, finish, settings};

per_store!(
    a_dependent_starts_as_its_upstream_task_says_and_moves_on_when_it_ends,
    a_dependent_loaded_while_its_upstream_task_runs_is_promoted_by_that_finish,
    a_failure_runs_down_the_chain_and_a_retry_brings_it_back,
    a_retried_dependent_of_a_failed_task_waits_and_a_step_keeps_an_after_added_later,
    a_cycle_of_steps_is_refused_with_nothing_written,
    a_dependent_step_made_again_with_other_shards_is_found_by_a_worker_that_knew_the_old_one,
    a_failure_at_the_head_of_the_longest_chain_fails_every_task_down_it_in_one_write,
);

fn after(steps: &[&str]) -> SettingsChange {
    SettingsChange {
        max_attempts: Some(1),
        after: Some(steps.iter().map(|s| (*s).to_owned()).collect()),
        ..SettingsChange::default()
    }
}

/// (waiting, pending, running, done, failed) of `step`.
async fn states<S: TaskStore>(store: &S, step: &str) -> (u64, u64, u64, u64, u64) {
    let s = &store.status(Some(step)).await.unwrap()[0];
    (s.waiting, s.pending, s.running, s.done, s.failed)
}

async fn end(t: &TestStore, step: &str, id: &str, next: TaskState) {
    let meta = t.store.step(step).await.unwrap().unwrap();
    let task = claimed(&t.store, step, id, "a/w").await;
    let class = (next == TaskState::Failed).then_some(FailureClass::Exit);
    let f = finish(task.attempt, next, class, Timestamp::now());
    assert_eq!(
        t.store.finish(&meta, &task, &f).await.unwrap(),
        Fence::Held,
        "{step}/{id}"
    );
}

async fn a_dependent_starts_as_its_upstream_task_says_and_moves_on_when_it_ends(t: TestStore) {
    load_text(
        &t.store,
        "align",
        "true",
        "sample\nA\nB\nC\n",
        settings(1, 60),
    )
    .await;
    end(&t, "align", "A", TaskState::Done).await;
    end(&t, "align", "B", TaskState::Failed).await;
    load_text(
        &t.store,
        "call",
        "true",
        "sample\nA\nB\nC\nD\n",
        after(&["align"]),
    )
    .await;

    let task = |id: &'static str| {
        let store = &t.store;
        async move { store.task("call", id).await.unwrap().unwrap() }
    };
    assert_eq!(task("A").await.state, TaskState::Pending);
    let call_b = task("B").await;
    assert_eq!(
        (call_b.state, call_b.failure_class, call_b.attempt),
        (TaskState::Failed, Some(FailureClass::Upstream), 0)
    );
    assert!(
        call_b.reason.as_deref().unwrap().contains("align/B failed"),
        "{:?}",
        call_b.reason
    );
    let call_c = task("C").await;
    assert_eq!(
        (call_c.state, call_c.waiting_on.clone()),
        (TaskState::Waiting, vec!["align".to_owned()])
    );
    assert_eq!(call_c.reason, None);
    let call_d = task("D").await;
    assert_eq!(call_d.state, TaskState::Waiting);
    assert!(
        call_d
            .reason
            .as_deref()
            .unwrap()
            .contains("align/D not loaded"),
        "{:?}",
        call_d.reason
    );
    assert_eq!(states(&t.store, "call").await, (2, 1, 0, 0, 1));
    assert_eq!(
        t.store.unfinished("call").await.unwrap(),
        taskfleet::store::Unfinished {
            waiting: 2,
            open: 1
        }
    );
    let up = t.store.task("align", "C").await.unwrap().unwrap();
    assert_eq!(up.dependents, ["call"]);

    // The worker that ends align/C moves call/C on, in the same write.
    end(&t, "align", "C", TaskState::Done).await;
    let call_c = task("C").await;
    assert_eq!(
        (call_c.state, call_c.waiting_on.len()),
        (TaskState::Pending, 0)
    );
    assert_eq!(states(&t.store, "call").await, (1, 2, 0, 0, 1));
    assert_eq!(states(&t.store, "align").await, (0, 0, 0, 2, 1));

    // The step keeps what it waits for: a later load without --after too.
    let meta = t.store.step("call").await.unwrap().unwrap();
    assert_eq!(meta.after, ["align"]);
    load_text(&t.store, "align", "true", "sample\nE\n", settings(1, 60)).await;
    load_text(
        &t.store,
        "call",
        "true",
        "sample\nE\n",
        SettingsChange::default(),
    )
    .await;
    let call_e = task("E").await;
    assert_eq!(
        (call_e.state, call_e.after.clone()),
        (TaskState::Waiting, vec!["align".to_owned()])
    );
    end(&t, "align", "E", TaskState::Done).await;
    assert_eq!(task("E").await.state, TaskState::Pending);
}

async fn a_dependent_loaded_while_its_upstream_task_runs_is_promoted_by_that_finish(t: TestStore) {
    load_text(&t.store, "align", "true", "sample\nA\n", settings(1, 60)).await;
    let meta = t.store.step("align").await.unwrap().unwrap();
    // The worker holds align/A as claimed, before any dependent existed.
    let running = claimed(&t.store, "align", "A", "a/w").await;
    assert!(running.dependents.is_empty());
    load_text(&t.store, "call", "true", "sample\nA\n", after(&["align"])).await;
    assert_eq!(
        t.store.task("call", "A").await.unwrap().unwrap().state,
        TaskState::Waiting
    );
    // Its finish, built from the task as claimed, still moves call/A on.
    let f = finish(running.attempt, TaskState::Done, None, Timestamp::now());
    assert_eq!(
        t.store.finish(&meta, &running, &f).await.unwrap(),
        Fence::Held
    );
    assert_eq!(
        t.store.task("call", "A").await.unwrap().unwrap().state,
        TaskState::Pending
    );
    assert_eq!(states(&t.store, "call").await, (0, 1, 0, 0, 0));
    // A worker that lost the task is still fenced out.
    assert_eq!(
        t.store.finish(&meta, &running, &f).await.unwrap(),
        Fence::Lost
    );
}

async fn a_failure_runs_down_the_chain_and_a_retry_brings_it_back(t: TestStore) {
    let sheet = "sample\nA\nB\n";
    load_text(&t.store, "align", "true", sheet, settings(1, 60)).await;
    load_text(&t.store, "call", "true", sheet, after(&["align"])).await;
    load_text(&t.store, "qc", "true", sheet, after(&["call"])).await;
    end(&t, "align", "A", TaskState::Failed).await;
    for step in ["call", "qc"] {
        let a = t.store.task(step, "A").await.unwrap().unwrap();
        assert_eq!(
            (a.state, a.failure_class),
            (TaskState::Failed, Some(FailureClass::Upstream)),
            "{step}/A"
        );
        assert_eq!(states(&t.store, step).await, (1, 0, 0, 0, 1), "{step}");
    }
    let qc = t.store.task("qc", "A").await.unwrap().unwrap();
    assert!(qc.reason.unwrap().contains("call/A failed"));

    // Retrying align/A puts both dependents back to waiting.
    let meta = t.store.step("align").await.unwrap().unwrap();
    assert_eq!(
        t.store.retry(&meta, "A", 1, "ana@login").await.unwrap(),
        taskfleet::store::ReplaceOutcome::Replaced
    );
    for step in ["call", "qc"] {
        let a = t.store.task(step, "A").await.unwrap().unwrap();
        assert_eq!(
            (a.state, a.failure_class),
            (TaskState::Waiting, None),
            "{step}/A"
        );
        assert_eq!(states(&t.store, step).await, (2, 0, 0, 0, 0), "{step}");
    }
    // And the chain runs through once each is done.
    end(&t, "align", "A", TaskState::Done).await;
    end(&t, "call", "A", TaskState::Done).await;
    assert_eq!(
        t.store.task("qc", "A").await.unwrap().unwrap().state,
        TaskState::Pending
    );
    assert_eq!(states(&t.store, "qc").await, (1, 1, 0, 0, 0));
    assert_eq!(states(&t.store, "align").await, (0, 1, 0, 1, 0));
}

async fn a_retried_dependent_of_a_failed_task_waits_and_a_step_keeps_an_after_added_later(
    t: TestStore,
) {
    load_text(&t.store, "align", "true", "sample\nA\n", settings(1, 60)).await;
    load_text(&t.store, "call", "true", "sample\nA\n", after(&["align"])).await;
    end(&t, "align", "A", TaskState::Failed).await;
    // Retrying the dependent itself does not let it run before align/A.
    let meta = t.store.step("call").await.unwrap().unwrap();
    assert_eq!(
        t.store.retry(&meta, "A", 0, "ana@login").await.unwrap(),
        taskfleet::store::ReplaceOutcome::Replaced
    );
    let call = t.store.task("call", "A").await.unwrap().unwrap();
    assert_eq!(call.state, TaskState::Waiting);
    assert_eq!(states(&t.store, "call").await, (1, 0, 0, 0, 0));

    // --after on a step that exists already is stored on it.
    load_text(&t.store, "qc", "true", "sample\nX\n", settings(1, 60)).await;
    load_text(
        &t.store,
        "qc",
        "true",
        "sample\nA\n",
        after(&["call", "call"]),
    )
    .await;
    let qc = t.store.step("qc").await.unwrap().unwrap();
    assert_eq!(qc.after, ["call"]);
    load_text(
        &t.store,
        "qc",
        "true",
        "sample\nB\n",
        SettingsChange::default(),
    )
    .await;
    let b = t.store.task("qc", "B").await.unwrap().unwrap();
    assert_eq!(
        (b.state, b.after.clone()),
        (TaskState::Waiting, vec!["call".to_owned()])
    );
}

async fn a_cycle_of_steps_is_refused_with_nothing_written(t: TestStore) {
    let sheet = "sample\nA\n";
    load_text(&t.store, "align", "true", sheet, settings(1, 60)).await;
    load_text(&t.store, "call", "true", sheet, after(&["align"])).await;
    load_text(&t.store, "qc", "true", sheet, after(&["call"])).await;
    // align after qc: align's tasks would wait for qc's, which wait for
    // call's, which wait for align's.
    let request = taskfleet::load::LoadRequest {
        step: "align".into(),
        script: "true".into(),
        settings: after(&["qc"]),
        replace: false,
        concurrency: 1,
    };
    let sheet = taskfleet::sheet::Sheet::parse(
        std::path::Path::new("s.csv"),
        b"sample\nA\nB\n",
        &taskfleet::sheet::SheetOptions::default(),
    )
    .unwrap();
    let prepared = taskfleet::load::prepare(request, sheet).unwrap();
    let err = taskfleet::load::load(&t.store, &prepared, &|_| {})
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "--after qc: qc waits for call, which waits for align; the tasks of these steps would wait for each other for ever. Load align without --after qc (or as a step of another name)"
    );
    let align = t.store.step("align").await.unwrap().unwrap();
    assert!(align.after.is_empty(), "{:?}", align.after);
    assert_eq!(
        states(&t.store, "align").await,
        (0, 1, 0, 0, 0),
        "B not loaded"
    );
}

/// A worker reads a dependent step's layout when it first ends a task with
/// dependents there. The step deleted and loaded again with another number
/// of shards (while the worker runs) puts the dependents elsewhere: the
/// worker must still find them, and count them where they now are.
async fn a_dependent_step_made_again_with_other_shards_is_found_by_a_worker_that_knew_the_old_one(
    t: TestStore,
) {
    use taskfleet::schema::shard_of;
    load_text(&t.store, "align", "true", "sample\nA\nB\n", settings(1, 60)).await;
    load_text(
        &t.store,
        "call",
        "true",
        "sample\nA\nB\n",
        after(&["align"]),
    )
    .await;
    // The worker (this handle) ends align/A, and so reads call's layout.
    end(&t, "align", "A", TaskState::Done).await;
    assert_eq!(states(&t.store, "call").await, (1, 1, 0, 0, 0));

    // An operator, elsewhere, deletes call (delete-step's way) and loads
    // it again with other shards, call/B's among them.
    let op = t.other_handle();
    let old = op.step("call").await.unwrap().unwrap();
    for state in TaskState::ALL {
        for shard in 0..old.shards {
            let far = Timestamp::now().plus(Duration::from_secs(3600));
            let (tasks, _) = op
                .in_state(&old, shard, state, far, None, 100)
                .await
                .unwrap();
            op.prune(&old, &tasks).await.unwrap();
        }
    }
    op.remove_step(&old).await.unwrap();
    let shards = (old.shards + 1..=old.shards + 64)
        .find(|&n| shard_of("B", n) != shard_of("B", old.shards))
        .expect("some shard count within 64 more puts B elsewhere");
    load_text(
        &op,
        "call",
        "true",
        "sample\nA\nB\n",
        SettingsChange {
            shards: Some(shards),
            ..after(&["align"])
        },
    )
    .await;
    assert_eq!(op.step("call").await.unwrap().unwrap().shards, shards);
    assert_eq!(states(&op, "call").await, (1, 1, 0, 0, 0));

    // The same worker ends align/B: call/B moves on, and is counted so.
    end(&t, "align", "B", TaskState::Done).await;
    assert_eq!(
        op.task("call", "B").await.unwrap().unwrap().state,
        TaskState::Pending
    );
    assert_eq!(states(&op, "call").await, (0, 2, 0, 0, 0));
}

/// The longest chain one write carries ([`MAX_CASCADE`] steps after one
/// task): a failure at its head fails every task down it, each counted.
async fn a_failure_at_the_head_of_the_longest_chain_fails_every_task_down_it_in_one_write(
    t: TestStore,
) {
    use taskfleet::transition::deps::MAX_CASCADE;
    let step = |i: usize| format!("s{i}");
    load_text(&t.store, &step(0), "true", "sample\nA\n", settings(1, 60)).await;
    for i in 1..=MAX_CASCADE {
        load_text(
            &t.store,
            &step(i),
            "true",
            "sample\nA\n",
            after(&[&step(i - 1)]),
        )
        .await;
    }
    end(&t, &step(0), "A", TaskState::Failed).await;
    for i in 1..=MAX_CASCADE {
        let task = t.store.task(&step(i), "A").await.unwrap().unwrap();
        assert_eq!(
            (task.state, task.failure_class),
            (TaskState::Failed, Some(FailureClass::Upstream)),
            "{}/A",
            step(i)
        );
        assert_eq!(
            states(&t.store, &step(i)).await,
            (0, 0, 0, 0, 1),
            "{}",
            step(i)
        );
    }
}
