//! The agent on EC2, against the project's own instance metadata server:
//! named after its instance, released by a spot notice without using an
//! attempt, stopped from claiming by a rebalance recommendation, and not
//! started at all when it cannot read its metadata.

use std::time::Duration;

use taskfleet::model::{FailureClass, TaskState};
use taskfleet::store::{SettingsChange, TaskStore};
use testkit::{Imds, InstanceInfo};

use crate::support::{Agent, TestTable, eventually, task};

fn one_attempt() -> SettingsChange {
    SettingsChange {
        max_attempts: Some(1),
        ..SettingsChange::default()
    }
}

#[tokio::test]
async fn a_spot_notice_releases_the_task_without_using_an_attempt_and_another_agent_finishes_it() {
    let t = TestTable::new("spot").await;
    // The first attempt would run a minute; any later one ends at once.
    let script = r#"[ "$ATTEMPT" -ge 2 ] || sleep 60; echo "done on attempt $ATTEMPT""#;
    // One attempt, and rules that fail anything the script could do at
    // once: the release is no failure of the task's.
    let strict = SettingsChange {
        rules: Some(
            ["class=exit", "class=signal", "class=timeout"]
                .iter()
                .map(|r| taskfleet::rules::parse(r, true).unwrap())
                .collect(),
        ),
        ..one_attempt()
    };
    t.load_text("qc", script, "sample\nA\n", strict).await;
    let imds = Imds::start(InstanceInfo::spot("i-0abc1234", &[("Name", "qc")]));
    let endpoint = imds.endpoint();
    let mut on_spot = Agent::spawn(
        &t,
        "qc",
        &[
            "--on-ec2",
            "--imds-endpoint",
            &endpoint,
            "--spot-poll",
            "200ms",
        ],
        &[],
    );
    let running = eventually(Duration::from_secs(30), "the task to run", || {
        if let Ok(Some(status)) = on_spot.child.try_wait() {
            panic!("the agent exited ({status}): {}", on_spot.stderr());
        }
        async {
            let a = task(&t, "qc", "A").await;
            (a.state == TaskState::Running).then_some(a)
        }
    })
    .await;
    assert!(
        running
            .owner
            .as_deref()
            .is_some_and(|o| o.starts_with("i-0abc1234/")),
        "owner {:?}",
        running.owner
    );
    imds.announce_spot_interruption();
    assert!(
        on_spot.wait(Duration::from_secs(30)).success(),
        "{}",
        on_spot.stderr()
    );
    let a = task(&t, "qc", "A").await;
    assert_eq!(
        (a.state, a.failed_attempts),
        (TaskState::Pending, 0),
        "{:?}",
        a.history
    );
    let record = a.history.last().unwrap();
    assert_eq!(record.failure_class, Some(FailureClass::Spot));
    assert!(
        record
            .provenance
            .as_deref()
            .is_some_and(|p| p.contains("i-0abc1234 (c6i.large, ami-0123456789abcdef0, spot")),
        "{record:?}"
    );

    // Its one attempt is still there for another worker to use.
    let mut other = Agent::spawn(&t, "qc", &["--idle-timeout", "2s"], &[]);
    assert!(
        other.wait(Duration::from_secs(60)).success(),
        "{}",
        other.stderr()
    );
    let a = task(&t, "qc", "A").await;
    assert_eq!(
        (a.state, a.attempt, a.failed_attempts),
        (TaskState::Done, 2, 0)
    );
}

#[tokio::test]
async fn a_rebalance_recommendation_stops_claiming_and_lets_the_running_task_finish() {
    let t = TestTable::new("rebalance").await;
    t.load_text("qc", "sleep 3", "sample\nA\nB\n", one_attempt())
        .await;
    let imds = Imds::start(InstanceInfo::spot("i-0feed", &[]));
    let endpoint = imds.endpoint();
    let mut agent = Agent::spawn(
        &t,
        "qc",
        &[
            "--on-ec2",
            "--imds-endpoint",
            &endpoint,
            "--spot-poll",
            "200ms",
            "--grace",
            "30s",
        ],
        &[],
    );
    eventually(Duration::from_secs(30), "a task to run", || async {
        let s = &t.store.status(Some("qc")).await.unwrap()[0];
        (s.running == 1).then_some(())
    })
    .await;
    imds.recommend_rebalance();
    assert!(
        agent.wait(Duration::from_secs(30)).success(),
        "{}",
        agent.stderr()
    );
    let s = &t.store.status(Some("qc")).await.unwrap()[0];
    assert_eq!(
        (s.done, s.pending, s.running),
        (1, 1, 0),
        "the running task finished and nothing more was claimed"
    );
}

#[tokio::test]
async fn an_agent_that_cannot_read_its_instance_metadata_does_not_start() {
    let t = TestTable::new("no-imds").await;
    t.load_text("qc", "true", "sample\nA\n", one_attempt())
        .await;
    // Nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let mut agent = Agent::spawn(&t, "qc", &["--on-ec2", "--imds-endpoint", &dead], &[]);
    let status = agent.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(5), "{}", agent.stderr());
    assert!(
        agent.stderr().contains("instance metadata"),
        "{}",
        agent.stderr()
    );
    let a = task(&t, "qc", "A").await;
    assert_eq!((a.state, a.attempt), (TaskState::Pending, 0));
}

#[tokio::test]
async fn an_instance_takes_its_place_from_its_launchs_first_place_and_its_launch_index() {
    let mut info = InstanceInfo::spot("i-2", &[("taskfleet:first-place", "4")]);
    info.launch_index = 1;
    let imds = Imds::start(info);
    let metadata = agent::ec2::Metadata::new(Some(&imds.endpoint())).unwrap();
    assert_eq!(metadata.instance().await.unwrap().launch_index, Some(5));

    // Launched some other way: its place in its own launch.
    imds.set_tag("taskfleet:first-place", None);
    assert_eq!(metadata.instance().await.unwrap().launch_index, Some(1));
}
