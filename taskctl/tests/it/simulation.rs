//! The whole EC2 path played on one machine.
//!
//! `taskctl agent publish`, `template apply` and `launch` run against moto
//! (S3 and EC2). Then, for each instance moto reports, the simulator does
//! what EC2 and the operating system would do at boot: it serves that
//! instance's metadata (`testkit::Imds`, with the id, type, AMI and tags
//! moto keeps for it) and runs the instance's own user-data, the real
//! `userdata/bootstrap.sh`, in a sandbox:
//!
//! - install paths under a temporary root (`TASKFLEET_ROOT`);
//! - the agent downloaded from moto's S3 by the AWS command line;
//! - two stand-ins for the operating system on `PATH`: `systemctl`, which
//!   starts the unit's `ExecStart` with its `Environment` lines (and the
//!   caller's environment, which carries the emulators' endpoints), and
//!   when the process ends follows the unit's `SuccessAction` /
//!   `FailureAction`; and `shutdown`, which records the power-off.
//!
//! The agents then run the step from DynamoDB Local and terminate their
//! own instances through moto's EC2.

use std::process::Command;
use std::time::{Duration, Instant};

use taskfleet::model::{FailureClass, TaskState};
use taskfleet::store::{RunningTask, TaskStore};
use testkit::{Imds, InstanceInfo};

use crate::support::{TestTable, fresh_agent};

mod sim;

use sim::{Sim, wait_for_agents, write_executable};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_boot_from_user_data_run_every_task_and_terminate_themselves() {
    let (sim, ids, hosts) = Sim::fleet(
        "sim-all",
        &[("taskfleet:idle-timeout", "2s"), ("taskfleet:grace", "5s")],
        (9, "sleep 0.5; echo \"$SAMPLE\""),
        3,
    )
    .await;
    wait_for_agents(&hosts, Duration::from_secs(120)).await;

    for host in &hosts {
        assert_eq!(
            host.agent_exit(),
            Some(0),
            "{}: {}",
            host.id,
            host.read("agent.log").unwrap_or_default()
        );
        // Installed where the unit runs it from, and the unit's own end
        // powered the host off too.
        assert!(host.root.join("usr/local/bin/taskfleet-agent").exists());
        assert!(host.powered_off(), "{}", host.id);
    }
    let states = sim.states(&ids).await;
    assert!(
        states.values().all(|s| s == "terminated"),
        "every instance terminated itself: {states:?}"
    );
    let tasks = sim.tasks("align", 9).await;
    for task in &tasks {
        assert_eq!(task.state, TaskState::Done, "{}", task.task_id);
        assert_eq!(task.attempt, 1, "{} ran once", task.task_id);
        let owner = &task.history[0].owner;
        assert!(
            ids.iter().any(|id| owner.starts_with(&format!("{id}/"))),
            "{} was run by an agent named after its instance: {owner}",
            task.task_id
        );
        // Its log went to the bucket the agent came from, as printed.
        let uri = task.history[0].log_uri.as_deref().unwrap_or_default();
        let key = uri
            .strip_prefix(&format!("s3://{}/taskfleet/logs/align/", sim.bucket))
            .unwrap_or_else(|| panic!("{}: log at {uri}", task.task_id));
        let object = sim
            .s3
            .get_object()
            .bucket(&sim.bucket)
            .key(format!("taskfleet/logs/align/{key}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{uri}: {e:?}"));
        let text = object.body.collect().await.unwrap().into_bytes();
        assert_eq!(
            String::from_utf8_lossy(&text),
            format!("{}\n", task.env["SAMPLE"]),
            "{uri}"
        );
        // Its provenance names the instance and the template version.
        let provenance = task.history[0].provenance.as_deref().unwrap_or_default();
        assert!(
            provenance.contains(&format!(
                "template {} version 1",
                sim.pattern.replace("{step}", "align")
            )),
            "{provenance}"
        );
    }
    let report = sim.run(&["status", "--json"]);
    let text = report.ok().stdout();
    assert!(text.contains("\"done\": 9"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_mid_task_hands_the_task_to_another_instance_without_using_an_attempt() {
    // The tasks run until the test opens a gate: the notice lands mid-task
    // however slowly the agents poll for it (every 5 s) on a busy machine.
    let gate = tempfile::tempdir().unwrap();
    let open = gate.path().join("open");
    let script = format!("until [ -e '{}' ]; do sleep 0.2; done", open.display());
    let (sim, ids, hosts) = Sim::fleet(
        "sim-spot",
        &[("taskfleet:idle-timeout", "2s"), ("taskfleet:grace", "5s")],
        (4, &script),
        3,
    )
    .await;
    // Once a task runs on the first instance, EC2 takes it back.
    let victim = &hosts[0];
    let on_victim = |r: &RunningTask| r.owner.starts_with(&format!("{}/", victim.id));
    let running = sim
        .wait_running(|running| running.iter().any(on_victim))
        .await;
    let task_id = running.into_iter().find(on_victim).unwrap().task_id;
    victim.imds.announce_spot_interruption();
    // The victim gives its task back before the gate opens.
    let start = Instant::now();
    while sim
        .table
        .store
        .task("align", &task_id)
        .await
        .unwrap()
        .unwrap()
        .history
        .iter()
        .all(|h| h.failure_class != Some(FailureClass::Spot))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{task_id} was not given back within a minute of the spot notice"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::write(&open, "").unwrap();
    wait_for_agents(&hosts, Duration::from_secs(120)).await;

    let states = sim.states(&ids).await;
    assert!(states.values().all(|s| s == "terminated"), "{states:?}");
    let task = sim
        .table
        .store
        .task("align", &task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.state, TaskState::Done);
    assert_eq!(task.failed_attempts, 0, "the spot release used no attempt");
    let spot = task
        .history
        .iter()
        .find(|h| h.failure_class == Some(FailureClass::Spot))
        .unwrap_or_else(|| panic!("a spot release in the history: {:?}", task.history));
    assert!(spot.owner.starts_with(&format!("{}/", victim.id)));
    let done = task.history.last().unwrap();
    assert_eq!(done.outcome, TaskState::Done);
    assert!(
        !done.owner.starts_with(&format!("{}/", victim.id)),
        "another instance finished it: {:?}",
        task.history
    );
    for task in sim.tasks("align", 4).await {
        assert_eq!(task.state, TaskState::Done, "{}", task.task_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_drains_the_instances_their_tasks_go_back_unharmed_and_the_instances_terminate() {
    let (sim, ids, hosts) = Sim::fleet(
        "sim-drain",
        &[("taskfleet:idle-timeout", "10m"), ("taskfleet:grace", "2s")],
        (4, "sleep 600"),
        2,
    )
    .await;
    sim.wait_running(|running| running.len() == 2).await;

    let out = sim.run(&["stop", "--step", "align"]);
    assert!(
        out.ok().stdout().contains("draining 2 EC2 instances"),
        "{}",
        out.stdout()
    );
    assert!(
        sim.states(&ids).await.values().all(|s| s == "running"),
        "stop without --now terminates nothing itself"
    );
    sim.mirror_tags(&hosts).await;
    wait_for_agents(&hosts, Duration::from_secs(60)).await;

    for host in &hosts {
        assert_eq!(
            host.agent_exit(),
            Some(0),
            "{}",
            host.read("agent.log").unwrap_or_default()
        );
    }
    let states = sim.states(&ids).await;
    assert!(states.values().all(|s| s == "terminated"), "{states:?}");
    let tasks = sim.tasks("align", 4).await;
    let released: Vec<_> = tasks.iter().filter(|t| !t.history.is_empty()).collect();
    assert_eq!(released.len(), 2, "{tasks:?}");
    for task in &tasks {
        assert_eq!(task.state, TaskState::Pending, "{}", task.task_id);
        assert_eq!(task.failed_attempts, 0, "{}", task.task_id);
    }
    for task in released {
        assert_eq!(
            task.history[0].failure_class,
            Some(FailureClass::Interrupted),
            "{:?}",
            task.history
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_table_deleted_the_agent_exits_fatally_and_its_instance_is_terminated() {
    let (sim, ids, hosts) = Sim::fleet(
        "sim-gone",
        &[("taskfleet:idle-timeout", "10m")],
        (1, "sleep 600"),
        1,
    )
    .await;
    // Once its task runs, the table goes.
    sim.wait_running(|running| !running.is_empty()).await;
    sim.table
        .store
        .client()
        .delete_table()
        .table_name(&sim.table.name)
        .send()
        .await
        .unwrap();
    wait_for_agents(&hosts, Duration::from_secs(120)).await;
    assert_eq!(
        hosts[0].agent_exit(),
        Some(3),
        "{}",
        hosts[0].read("agent.log").unwrap_or_default()
    );
    assert_eq!(sim.states(&ids).await[&ids[0]], "terminated");
    assert!(hosts[0].read("unit-poweroff").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_that_does_not_match_its_checksum_is_never_run_and_the_instance_shuts_down() {
    let sim = Sim::new("sim-sum").await;
    // A stand-in "agent" that leaves a mark when it runs.
    let fake = sim.dir.path().join("fake-agent");
    write_executable(&fake, "#!/bin/sh\ntouch \"$TASKFLEET_ROOT/ran\"\n");
    sim.publish(&fake).ok();
    sim.apply_template("align", &[]);
    sim.load("align", 1, "true");

    // Published as it is, it runs: the mark proves the sandbox would see
    // it.
    let ids = sim.launch("align", 1);
    let (good, out) = sim.boot(&ids[0]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_agents(std::slice::from_ref(&good), Duration::from_secs(30)).await;
    assert!(good.root.join("ran").exists());

    // The checksum beside it no longer matches.
    sim.s3
        .put_object()
        .bucket(&sim.bucket)
        .key(format!("taskfleet/agent/{}/agent.sha256", sim.version))
        .body(format!("{}  agent\n", "0".repeat(64)).into_bytes().into())
        .send()
        .await
        .unwrap();
    let ids = sim.launch("align", 1);
    let (bad, out) = sim.boot(&ids[0]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("not the published") && stderr.contains("shutting down"),
        "{stderr}"
    );
    assert!(bad.powered_off(), "the instance shuts down");
    assert!(!bad.root.join("ran").exists(), "the binary never ran");
    assert!(!bad.root.join("usr/local/bin/taskfleet-agent").exists());
    assert!(bad.read("agent.pid").is_none(), "no unit was started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_terminate_instances_fails_the_agent_powers_the_host_off() {
    let table = TestTable::new("sim-fallback").await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("powered-off");
    let poweroff = dir.path().join("poweroff");
    write_executable(
        &poweroff,
        &format!("#!/bin/sh\necho \"$@\" > {}\n", marker.display()),
    );
    let imds = Imds::start(InstanceInfo::spot("i-0fa11bac0000000001", &[]));
    // No step: a fatal error at once. EC2 answers nowhere.
    let out = Command::new(fresh_agent())
        .env_clear()
        .envs(testkit::child_env())
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:9")
        .args([
            "--table",
            &table.name,
            "--endpoint-url",
            &table.endpoint,
            "--step",
            "missing",
            "--on-ec2",
            "--imds-endpoint",
            &imds.endpoint(),
            "--terminate-on-exit",
            "--poweroff-command",
        ])
        .arg(format!("{} -h now", poweroff.display()))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some("-h now\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_is_once_per_version_and_names_a_missing_bucket() {
    let sim = Sim::new("sim-publish").await;
    let agent = fresh_agent();
    let first = sim.publish(agent).json();
    assert_eq!(first["outcome"], "uploaded");
    let again = sim.publish(agent).json();
    assert_eq!(again["outcome"], "unchanged");
    assert_eq!(again["sha256"], first["sha256"]);
    // The object holds the binary, and its checksum is in sha256sum form.
    let sum = sim
        .s3
        .get_object()
        .bucket(&sim.bucket)
        .key(format!("taskfleet/agent/{}/agent.sha256", sim.version))
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(
        String::from_utf8_lossy(&sum),
        format!("{}  agent\n", first["sha256"].as_str().unwrap())
    );

    let other = sim.dir.path().join("other-agent");
    write_executable(&other, "#!/bin/sh\nexit 0\n");
    let err = sim.publish(&other).fails();
    assert!(
        err.contains("already published") && err.contains("--replace"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let err = sim
        .run(&[
            "agent",
            "publish",
            "--binary",
            agent.to_str().unwrap(),
            "--bucket",
            "no-such-bucket-here",
        ])
        .fails();
    assert!(err.contains("does not exist"), "{err}");
    // Its version comes from the binary itself.
    let dry = sim
        .run(&[
            "agent",
            "publish",
            "--binary",
            agent.to_str().unwrap(),
            "--bucket",
            &sim.bucket,
            "--dry-run",
            "--json",
        ])
        .json();
    assert_eq!(dry["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(dry["outcome"], "dry-run");
    let listed = sim
        .s3
        .list_objects_v2()
        .bucket(&sim.bucket)
        .prefix(format!("taskfleet/agent/{}/", env!("CARGO_PKG_VERSION")))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.key_count(), Some(0), "a dry run uploads nothing");
}
