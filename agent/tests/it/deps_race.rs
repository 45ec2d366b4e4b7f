//! A load `--after` that lands between the reads and the write of the end
//! of an upstream task, on DynamoDB, where the two are separate requests
//! (the embedded store plans and writes an end in one transaction, so
//! there is no such gap). The proxy holds the worker's end transaction
//! after its reads until the load is written.
//!
//! The upstream task lists the dependent step already (a task of the same
//! id was loaded and removed), so the load writes nothing on it and starts
//! the new dependent as waiting, the upstream task being running. The end
//! then must not commit on what it read: the dependent was missing.

use std::time::{Duration, Instant};

use taskfleet::TaskState;
use taskfleet::store::dynamo::DynamoStore;
use taskfleet::store::{Fence, SettingsChange, Store, TaskStore};
use taskfleet::time::Timestamp;
use testkit::{Proxy, RequestCounter, TestStore, client_on, load_text};

use crate::conformance::{claimed, finish, settings};

fn after_align() -> SettingsChange {
    SettingsChange {
        max_attempts: Some(1),
        after: Some(vec!["align".into()]),
        ..SettingsChange::default()
    }
}

/// What is removed of `call` before the end's reads.
#[derive(Clone, Copy)]
enum Removed {
    /// call/B only: the end reads it as missing.
    Task,
    /// The whole step (delete-step's way): the end finds no step `call`.
    Step,
}

#[tokio::test]
async fn a_dependent_loaded_after_the_end_read_it_as_missing_is_moved_on_by_that_end() {
    dependent_loaded_during_an_end(Removed::Task).await;
}

#[tokio::test]
async fn a_dependent_step_made_after_the_end_found_none_has_its_task_moved_on_by_that_end() {
    dependent_loaded_during_an_end(Removed::Step).await;
}

async fn dependent_loaded_during_an_end(removed: Removed) {
    let proxy = Proxy::start(&testkit::endpoint());
    // The operator's handle, straight to the store.
    let t = TestStore::new(testkit::Kind::Dynamo, "dep-race").await;
    let ops = &t.store;
    load_text(ops, "align", "true", "sample\nA\nB\n", settings(1, 60)).await;
    load_text(ops, "call", "true", "sample\nA\nB\n", after_align()).await;
    let call = ops.step("call").await.unwrap().unwrap();
    match removed {
        Removed::Task => {
            let b = ops.task("call", "B").await.unwrap().unwrap();
            assert_eq!(ops.prune(&call, &[b]).await.unwrap(), 1);
        }
        Removed::Step => {
            let a = ops.task("call", "A").await.unwrap().unwrap();
            let b = ops.task("call", "B").await.unwrap().unwrap();
            assert_eq!(ops.prune(&call, &[a, b]).await.unwrap(), 2);
            ops.remove_step(&call).await.unwrap();
        }
    }

    // The worker, through the proxy, runs align/B; align/B still lists
    // call among its dependents.
    let worker = Store::Dynamo(DynamoStore::new(
        client_on(&proxy.endpoint(), &RequestCounter::default()),
        &t.locator,
        proxy.endpoint(),
    ));
    let task = claimed(&worker, "align", "B", "a/w").await;
    assert_eq!(task.dependents, ["call"]);
    let meta = worker.step("align").await.unwrap().unwrap();
    proxy.hold_requests("TransactWriteItems");
    let ending = tokio::spawn(async move {
        let f = finish(task.attempt, TaskState::Done, None, Timestamp::now());
        worker.finish(&meta, &task, &f).await.unwrap()
    });
    let started = Instant::now();
    while proxy.held() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the end of align/B sent no transaction within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Read and planned, not written: call/B is loaded now, waiting on
    // align/B as it is (running).
    let sheet = match removed {
        Removed::Task => "sample\nB\n",
        Removed::Step => "sample\nA\nB\n",
    };
    load_text(ops, "call", "true", sheet, after_align()).await;
    let b = ops.task("call", "B").await.unwrap().unwrap();
    assert_eq!(b.state, TaskState::Waiting);

    proxy.restore();
    assert_eq!(ending.await.unwrap(), Fence::Held);
    let b = ops.task("call", "B").await.unwrap().unwrap();
    assert_eq!(
        b.state,
        TaskState::Pending,
        "call/B is left waiting on a done align/B"
    );
    let s = &ops.status(Some("call")).await.unwrap()[0];
    assert_eq!(
        (s.total, s.waiting, s.pending),
        (2, 1, 1),
        "A waits, B pending"
    );
}
