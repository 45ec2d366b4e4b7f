use std::fmt::Write;

use taskfleet::TaskState;
use taskfleet::model::AttemptRecord;
use taskfleet::store::{Candidate, Claim, Fence, Finish, TaskStore};
use taskfleet::time::Timestamp;

use crate::support::{Taskctl, TestTable, samples_2504};

fn load_samples(t: &TestTable, step: &str, sheet: &str) -> serde_json::Value {
    let run = t.taskctl(&[
        "load",
        "--step",
        step,
        "--command",
        "echo \"$SAMPLE\"",
        "--json",
        sheet,
    ]);
    run.ok();
    run.json()
}

#[tokio::test]
async fn loading_the_2504_sample_sheet_gives_2504_pending_tasks_with_their_environment() {
    let t = TestTable::new("load2504").await;
    let sheet = samples_2504();
    let report = load_samples(&t, "align", sheet.to_str().unwrap());
    assert_eq!(report["loaded"], 2504);
    assert_eq!(report["skipped_existing"], 0);
    assert_eq!(report["step_created"], true);

    let status = t.taskctl(&["status", "--step", "align", "--json"]);
    status.ok();
    let s = &status.json()[0];
    assert_eq!(
        (s["total"].as_u64(), s["pending"].as_u64()),
        (Some(2504), Some(2504))
    );
    assert_eq!(
        (
            s["running"].as_u64(),
            s["done"].as_u64(),
            s["failed"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(t.task_count("align").await, 2504);

    // Spot-check rows against the sheet: every column as an upper-case
    // variable, the script stored as given.
    let text = std::fs::read_to_string(&sheet).unwrap();
    for line in text.lines().skip(1).step_by(500) {
        let f: Vec<&str> = line.split(',').collect();
        let task = t
            .store
            .task("align", f[0])
            .await
            .unwrap()
            .expect("task exists");
        assert_eq!(task.state, TaskState::Pending);
        assert_eq!(task.attempt, 0);
        assert_eq!(task.script, "echo \"$SAMPLE\"");
        let env: Vec<(&str, &str)> = task
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("FASTQ_1", f[4]),
                ("FASTQ_2", f[5]),
                ("POPULATION", f[1]),
                ("SAMPLE", f[0]),
                ("SEX", f[3]),
                ("SUPER_POPULATION", f[2]),
            ]
        );
    }
    let shown = t.taskctl(&["show", "align", "HG00098", "--json"]);
    shown.ok();
    assert_eq!(shown.json()["env"]["POPULATION"], "CLM");
}

#[tokio::test]
async fn loading_the_same_sheet_again_adds_nothing_and_ten_new_rows_add_ten() {
    let t = TestTable::new("reload").await;
    let sheet = samples_2504();
    load_samples(&t, "align", sheet.to_str().unwrap());
    let before = t.dump().await;

    let again = load_samples(&t, "align", sheet.to_str().unwrap());
    assert_eq!(
        (again["loaded"].as_u64(), again["skipped_existing"].as_u64()),
        (Some(0), Some(2504))
    );
    // Apart from the record of the load itself, kept beside the step.
    let after = t.dump().await;
    let (records, tasks): (Vec<_>, Vec<_>) = after
        .into_iter()
        .partition(|(key, _)| key.contains("@loads#align"));
    let before_tasks: Vec<_> = before
        .into_iter()
        .filter(|(key, _)| !key.contains("@loads#align"))
        .collect();
    assert_eq!(
        tasks, before_tasks,
        "a second load must not change any task, step or counter"
    );
    assert_eq!(records.len(), 2, "one record per load");

    let mut grown = std::fs::read_to_string(&sheet).unwrap();
    for i in 0..10 {
        let _ = writeln!(
            grown,
            "NEW{i:03},GBR,EUR,female,s3://r/NEW{i:03}_1.fq.gz,s3://r/NEW{i:03}_2.fq.gz"
        );
    }
    let grown = t.file("grown.csv", grown);
    let third = load_samples(&t, "align", grown.to_str().unwrap());
    assert_eq!(
        (third["loaded"].as_u64(), third["skipped_existing"].as_u64()),
        (Some(10), Some(2504))
    );
    assert_eq!(t.task_count("align").await, 2514);
    let status = t.store.status(Some("align")).await.unwrap();
    assert_eq!((status[0].total, status[0].pending), (2514, 2514));
}

#[tokio::test]
async fn reloading_leaves_running_and_done_tasks_alone_and_replace_resets_only_those_not_running() {
    let t = TestTable::new("replace").await;
    let sheet = t.file("s.csv", "sample,x\nA,1\nB,2\nC,3\n");
    let sheet = sheet.to_str().unwrap();
    t.taskctl(&["load", "--step", "qc", "--command", "v1", sheet])
        .ok();

    // A is claimed (running) and B finished (done), through the store's
    // own transitions, as workers leave them.
    let meta = t.store.step("qc").await.unwrap().unwrap();
    let now = Timestamp::now();
    let claim = |id: &str| Candidate {
        task_id: id.into(),
        state: TaskState::Pending,
        attempt: 0,
        state_at: taskfleet::time::Timestamp::from_millis(0),
    };
    let Claim::Claimed(a) = t
        .store
        .claim(&meta, &claim("A"), "i-0/w0", now)
        .await
        .unwrap()
    else {
        panic!("A is claimable")
    };
    let Claim::Claimed(b) = t
        .store
        .claim(&meta, &claim("B"), "i-0/w1", now)
        .await
        .unwrap()
    else {
        panic!("B is claimable")
    };
    let done = Finish {
        next: TaskState::Done,
        counts_as_failure: false,
        ready_at: now,
        record: AttemptRecord {
            attempt: 1,
            owner: "i-0/w1".into(),
            started_at: now,
            finished_at: now,
            outcome: TaskState::Done,
            exit_code: Some(0),
            signal: None,
            failure_class: None,
            log_uri: None,
            provenance: None,
        },
        output_tail: None,
        escalate_to: None,
        expires_at: None,
    };
    assert_eq!(t.store.finish(&meta, &b, &done).await.unwrap(), Fence::Held);
    let a = *a;

    // Without --replace: nothing changes.
    t.taskctl(&["load", "--step", "qc", "--command", "v2", sheet])
        .ok();
    assert_eq!(t.store.task("qc", "A").await.unwrap().unwrap(), a);
    assert_eq!(
        t.store.task("qc", "B").await.unwrap().unwrap().state,
        TaskState::Done
    );

    // With --replace: B and C are reset with the new script; A is running
    // and is left alone.
    let run = t.taskctl(&[
        "load",
        "--step",
        "qc",
        "--command",
        "v2",
        "--replace",
        "--json",
        sheet,
    ]);
    run.ok();
    let report = run.json();
    assert_eq!(
        (
            report["replaced"].as_u64(),
            report["skipped_running"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(t.store.task("qc", "A").await.unwrap().unwrap(), a);
    let b2 = t.store.task("qc", "B").await.unwrap().unwrap();
    // The attempt number stays: it names logs and work directories.
    assert_eq!(
        (b2.state, b2.attempt, b2.failed_attempts, b2.script.as_str()),
        (TaskState::Pending, 1, 0, "v2")
    );
    assert_eq!(b2.history.len(), 1, "the done attempt stays in the history");
    let s = &t.store.status(Some("qc")).await.unwrap()[0];
    assert_eq!((s.total, s.running, s.done, s.pending), (3, 1, 0, 2));
}

#[tokio::test]
async fn settings_given_at_load_are_stored_once_for_the_step() {
    let t = TestTable::new("settings").await;
    let sheet = t.file("s.csv", "sample\nA\n");
    t.taskctl(&[
        "load",
        "--step",
        "qc",
        "--command",
        "true",
        "--max-attempts",
        "5",
        "--lease",
        "2m",
        "--shards",
        "4",
        sheet.to_str().unwrap(),
    ])
    .ok();
    let meta = t.store.step("qc").await.unwrap().unwrap();
    assert_eq!(
        (
            meta.settings.max_attempts,
            meta.settings.lease.as_secs(),
            meta.shards
        ),
        (5, 120, 4)
    );

    let run = t.taskctl(&[
        "load",
        "--step",
        "qc",
        "--command",
        "true",
        "--max-attempts",
        "2",
        sheet.to_str().unwrap(),
    ]);
    run.ok();
    assert!(
        run.stdout().contains("updated the settings of step 'qc'"),
        "{}",
        run.stdout()
    );
    let meta = t.store.step("qc").await.unwrap().unwrap();
    assert_eq!(
        (meta.settings.max_attempts, meta.settings.lease.as_secs()),
        (2, 120)
    );

    let err = t
        .taskctl(&[
            "load",
            "--step",
            "qc",
            "--command",
            "true",
            "--shards",
            "8",
            sheet.to_str().unwrap(),
        ])
        .fails();
    assert!(err.contains("step 'qc' was created with 4 shards"), "{err}");
}

#[tokio::test]
async fn a_load_killed_midway_and_run_again_leaves_every_task_once_and_the_count_exact() {
    // The step exists: every batch is counted in the transaction that
    // writes it, so the count is exact at any kill.
    killed_midway_and_run_again(true).await;
}

#[tokio::test]
async fn a_first_load_killed_midway_is_recounted_by_the_next_load_and_every_task_written_once() {
    // A new step's first load writes plain batches and counts behind them:
    // killed, its count may trail its writes (never exceed them), and the
    // next load, finding the lock of a process gone from this host, takes
    // it at once, recounts and writes the rest.
    killed_midway_and_run_again(false).await;
}

async fn killed_midway_and_run_again(step_exists: bool) {
    let t = TestTable::new("killed-load").await;
    let n = 20_000;
    let sheet = t.file("big.csv", testkit::generated_sheet(n));
    let sheet = sheet.to_str().unwrap();
    let before = if step_exists {
        let first = t.file("first.csv", "sample\nfirst\n");
        load_samples_with(&t, first.to_str().unwrap());
        1
    } else {
        0
    };
    let args = [
        "--table",
        t.name.as_str(),
        "--endpoint-url",
        &crate::support::endpoint(),
        "load",
        "--step",
        "qc",
        "--command",
        "true",
        sheet,
    ];
    let mut loader = std::process::Command::new(env!("CARGO_BIN_EXE_taskctl"))
        .env_clear()
        .envs(testkit::child_env())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // SIGKILL it part-way, when some batches are written and others are in
    // flight.
    let started = std::time::Instant::now();
    loop {
        let total = match t.store.status(Some("qc")).await {
            Ok(s) => s[0].total,
            Err(_) => 0,
        };
        if total >= 2_000 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the load did not get going"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    loader.kill().unwrap();
    loader.wait().unwrap();
    // Requests already sent are still carried out by the service: let them
    // land before comparing.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let counted = t.store.status(Some("qc")).await.unwrap()[0].total;
    let written = t.task_count("qc").await as u64;
    assert!(
        written < (n + before) as u64,
        "killed too late to test anything"
    );
    if step_exists {
        assert_eq!(
            counted, written,
            "loaded must count exactly the tasks written, after a SIGKILL"
        );
    } else {
        assert!(counted <= written, "counted {counted} of {written} written");
        let meta = t.store.step("qc").await.unwrap().unwrap();
        assert!(meta.first_load.is_some(), "the dead load's lock is gone");
    }

    let again = load_again_timing_the_takeover(&t, sheet).await;
    assert_eq!(
        again["loaded"].as_u64().unwrap() + written,
        (n + before) as u64,
        "{again}"
    );
    assert_eq!(t.task_count("qc").await, n + before);
    let s = &t.store.status(Some("qc")).await.unwrap()[0];
    let all = (n + before) as u64;
    assert_eq!((s.total, s.pending), (all, all));
    assert!(
        t.store
            .step("qc")
            .await
            .unwrap()
            .unwrap()
            .first_load
            .is_none()
    );
}

/// Loads `sheet` again while timing how soon the lock of the killed load
/// is taken over; the load's JSON report.
async fn load_again_timing_the_takeover(t: &TestTable, sheet: &str) -> serde_json::Value {
    // The next load takes a dead local loader's lock after 15 s, where a
    // lock left from elsewhere is waited out until it lapses (30 s): time
    // the takeover itself, not the writing after it, which depends on how
    // busy the machine is.
    let dead = t.store.step("qc").await.unwrap().unwrap().first_load;
    let rerun = std::time::Instant::now();
    let loading = {
        let (name, endpoint, sheet) = (t.name.clone(), t.endpoint.clone(), sheet.to_owned());
        std::thread::spawn(move || {
            let run = crate::support::taskctl_with(
                &[
                    "--table",
                    &name,
                    "load",
                    "--step",
                    "qc",
                    "--command",
                    "true",
                    "--json",
                    &sheet,
                ],
                &[("TASKFLEET_ENDPOINT", endpoint.as_str())],
            );
            run.ok();
            run.json()
        })
    };
    if dead.is_some() {
        loop {
            let now = t.store.step("qc").await.unwrap().unwrap().first_load;
            if now.as_ref().map(|l| &l.holder) != dead.as_ref().map(|l| &l.holder) {
                break;
            }
            assert!(
                rerun.elapsed() < std::time::Duration::from_secs(25),
                "the lock of a dead loader on this host was waited out"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    loading.join().expect("the second load")
}

fn load_samples_with(t: &TestTable, sheet: &str) -> serde_json::Value {
    let run = t.taskctl(&["load", "--step", "qc", "--command", "true", "--json", sheet]);
    run.ok();
    run.json()
}
