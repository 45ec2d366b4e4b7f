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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use taskfleet::model::{FailureClass, TaskState};
use taskfleet::store::{RunningTask, TaskStore};
use testkit::{Imds, InstanceInfo};

use crate::support::{Run, TestTable, fresh_agent, moto_endpoint, taskctl_with};

/// `systemctl` as far as the bootstrap uses it.
const SYSTEMCTL: &str = r#"#!/bin/bash
# Stand-in for systemctl: daemon-reload, and start of a unit under
# $TASKFLEET_ROOT/etc/systemd/system, run in the background like a service.
set -euo pipefail
case $1 in
  daemon-reload) exit 0 ;;
  start) unit=$TASKFLEET_ROOT/etc/systemd/system/$2 ;;
  *) echo "systemctl stand-in: '$*' is not supported" >&2; exit 1 ;;
esac
envs=() exec_start=() on_success="" on_failure=""
while IFS= read -r line; do
  case $line in
    Environment=*) envs+=("${line#Environment=}") ;;
    ExecStart=*) read -ra exec_start <<<"${line#ExecStart=}" ;;
    SuccessAction=poweroff) on_success=1 ;;
    FailureAction=poweroff) on_failure=1 ;;
  esac
done <"$unit"
[ ${#exec_start[@]} -gt 0 ] || { echo "no ExecStart in $unit" >&2; exit 1; }
(
  set +e
  env "${envs[@]}" "${exec_start[@]}" >"$TASKFLEET_ROOT/agent.log" 2>&1 &
  echo $! >"$TASKFLEET_ROOT/agent.pid"
  wait $!
  rc=$?
  if { [ $rc = 0 ] && [ -n "$on_success" ]; } || { [ $rc != 0 ] && [ -n "$on_failure" ]; }; then
    echo unit >"$TASKFLEET_ROOT/unit-poweroff"
    shutdown -h now
  fi
  echo $rc >"$TASKFLEET_ROOT/agent.exit"
) </dev/null >/dev/null 2>&1 &
"#;

/// `shutdown`: records that the host was powered off.
const SHUTDOWN: &str = r#"#!/bin/bash
echo "shutdown $*" >>"$TASKFLEET_ROOT/poweroff"
"#;

/// One simulated instance: its metadata server and sandbox.
struct Host {
    id: String,
    imds: Imds,
    root: PathBuf,
}

impl Host {
    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(name)).ok()
    }

    /// The agent's exit code, once it has exited.
    fn agent_exit(&self) -> Option<i32> {
        self.read("agent.exit").and_then(|s| s.trim().parse().ok())
    }

    fn powered_off(&self) -> bool {
        self.read("poweroff").is_some()
    }
}

/// A table, a bucket with the agent published in it, a launch template
/// naming pattern of the test's own, and clients of moto.
struct Sim {
    table: TestTable,
    dir: tempfile::TempDir,
    pattern: String,
    bucket: String,
    version: String,
    moto: String,
    ec2: aws_sdk_ec2::Client,
    s3: aws_sdk_s3::Client,
    bin: PathBuf,
}

impl Sim {
    async fn new(label: &str) -> Self {
        let moto = moto_endpoint();
        let aws_cli = aws_cli();
        let table = TestTable::new(label).await;
        let dir = tempfile::tempdir().unwrap();
        for sub in ["launch-templates", "userdata", "bin"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::copy(
            repo().join("userdata/bootstrap.sh"),
            dir.path().join("userdata/bootstrap.sh"),
        )
        .unwrap();
        let bin = dir.path().join("bin");
        write_executable(&bin.join("systemctl"), SYSTEMCTL);
        write_executable(&bin.join("shutdown"), SHUTDOWN);
        std::os::unix::fs::symlink(&aws_cli, bin.join("aws")).unwrap();
        let ec2 = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(&moto)
                .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
                .build(),
        );
        let s3 = crate::support::moto_s3(&moto);
        let bucket = table.name.to_ascii_lowercase().replace('_', "-");
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        Self {
            pattern: format!("{}-{{step}}", table.name),
            version: "0.0.0-test".to_owned(),
            table,
            dir,
            bucket,
            moto,
            ec2,
            s3,
            bin,
        }
    }

    /// `taskctl` on this table, with EC2 and S3 at moto.
    fn run(&self, args: &[&str]) -> Run {
        let mut all = vec![
            "--table",
            &self.table.name,
            "--template-name",
            &self.pattern,
        ];
        all.extend_from_slice(args);
        taskctl_with(
            &all,
            &[
                ("TASKFLEET_ENDPOINT", self.table.endpoint.as_str()),
                ("AWS_ENDPOINT_URL_EC2", self.moto.as_str()),
                ("AWS_ENDPOINT_URL_S3", self.moto.as_str()),
            ],
        )
    }

    /// A step of `n` tasks running `script`, the agent published, the
    /// template applied with `tags`, and `count` instances launched and
    /// booted.
    async fn fleet(
        label: &str,
        tags: &[(&str, &str)],
        (n, script): (usize, &str),
        count: usize,
    ) -> (Self, Vec<String>, Vec<Host>) {
        let sim = Self::new(label).await;
        sim.publish(fresh_agent()).ok();
        sim.apply_template("align", tags);
        sim.load("align", n, script);
        let ids = sim.launch("align", count);
        assert_eq!(ids.len(), count, "{ids:?}");
        let hosts = sim.boot_all(&ids).await;
        (sim, ids, hosts)
    }

    /// Waits (up to a minute) until the running tasks of `align` satisfy
    /// `enough`, and returns them.
    async fn wait_running(&self, enough: impl Fn(&[RunningTask]) -> bool) -> Vec<RunningTask> {
        let meta = self.table.store.step("align").await.unwrap().unwrap();
        let start = Instant::now();
        loop {
            let running = self.table.store.running(&meta).await.unwrap();
            if enough(&running) {
                return running;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "still running after a minute: {running:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Publishes `binary` as this test's agent version.
    fn publish(&self, binary: &Path) -> Run {
        self.run(&[
            "agent",
            "publish",
            "--binary",
            binary.to_str().unwrap(),
            "--bucket",
            &self.bucket,
            "--agent-version",
            &self.version,
            "--json",
        ])
    }

    /// Writes `STEP.json` naming this test's agent and `tags`, and applies
    /// it.
    fn apply_template(&self, step: &str, tags: &[(&str, &str)]) {
        let mut all = vec![
            ("taskfleet:agent-bucket", self.bucket.as_str()),
            ("taskfleet:agent-version", self.version.as_str()),
        ];
        all.extend_from_slice(tags);
        let tags = all
            .iter()
            .map(|(k, v)| serde_json::json!({ "Key": k, "Value": v }))
            .collect::<Vec<_>>();
        let file = serde_json::json!({
            "UserDataFile": "bootstrap.sh",
            "ImageId": "ami-12c6146b",
            "InstanceType": "t3.micro",
            "MetadataOptions": { "HttpEndpoint": "enabled", "HttpTokens": "required",
                                 "HttpPutResponseHopLimit": 1, "InstanceMetadataTags": "enabled" },
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [{ "ResourceType": "instance", "Tags": tags }],
        });
        let templates = self.dir.path().join("launch-templates");
        std::fs::write(
            templates.join(format!("{step}.json")),
            serde_json::to_vec_pretty(&file).unwrap(),
        )
        .unwrap();
        let userdata = self.dir.path().join("userdata");
        self.run(&[
            "template",
            "apply",
            "--step",
            step,
            "--templates-dir",
            templates.to_str().unwrap(),
            "--userdata-dir",
            userdata.to_str().unwrap(),
        ])
        .ok();
    }

    /// `taskctl launch --step STEP --count N`: the instance ids.
    fn launch(&self, step: &str, count: usize) -> Vec<String> {
        let run = self.run(&[
            "launch",
            "--step",
            step,
            "--count",
            &count.to_string(),
            "--json",
        ]);
        run.ok();
        run.json()["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    /// What EC2 does at boot, for instance `id`: its metadata served, its
    /// user-data run in a sandbox. Returns the host and the bootstrap's
    /// run.
    async fn boot(&self, id: &str) -> (Host, std::process::Output) {
        let described = self
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap();
        let instance = &described.reservations()[0].instances()[0];
        let tags: BTreeMap<String, String> = instance
            .tags()
            .iter()
            .map(|t| {
                (
                    t.key().unwrap_or_default().to_owned(),
                    t.value().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let user_data = self
            .ec2
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap()
            .user_data()
            .and_then(|v| v.value())
            .map(|b64| aws_smithy_types::base64::decode(b64).unwrap())
            .expect("the instance has the template's user-data");
        let imds = Imds::start(InstanceInfo {
            instance_id: id.to_owned(),
            region: "us-east-1".to_owned(),
            instance_type: instance
                .instance_type()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            ami_id: instance.image_id().unwrap_or_default().to_owned(),
            lifecycle: "on-demand".to_owned(),
            tags,
            launch_index: instance
                .ami_launch_index()
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(0),
        });
        let root = self.dir.path().join(id);
        std::fs::create_dir_all(&root).unwrap();
        let script = root.join("user-data");
        std::fs::write(&script, user_data).unwrap();
        let path = format!(
            "{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            self.bin.display()
        );
        let output = Command::new("bash")
            .arg(&script)
            .env_clear()
            .env("PATH", path)
            .env("HOME", &root)
            .env("TASKFLEET_ROOT", &root)
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_ENDPOINT_URL_S3", &self.moto)
            .env("AWS_ENDPOINT_URL_EC2", &self.moto)
            .env("AWS_ENDPOINT_URL_DYNAMODB", &self.table.endpoint)
            .output()
            .expect("run the user-data");
        (
            Host {
                id: id.to_owned(),
                imds,
                root,
            },
            output,
        )
    }

    /// Boots every instance; each bootstrap must succeed.
    async fn boot_all(&self, ids: &[String]) -> Vec<Host> {
        let mut hosts = Vec::new();
        for id in ids {
            let (host, out) = self.boot(id).await;
            assert!(
                out.status.success(),
                "the bootstrap of {id} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            hosts.push(host);
        }
        hosts
    }

    /// What EC2 does when an instance's tags change: its metadata shows
    /// them (the launch templates enable tags in metadata).
    async fn mirror_tags(&self, hosts: &[Host]) {
        for host in hosts {
            let out = self
                .ec2
                .describe_instances()
                .instance_ids(&host.id)
                .send()
                .await
                .unwrap();
            for tag in out.reservations()[0].instances()[0].tags() {
                host.imds
                    .set_tag(tag.key().unwrap_or_default(), tag.value());
            }
        }
    }

    /// The state moto reports for each of `ids`.
    async fn states(&self, ids: &[String]) -> BTreeMap<String, String> {
        let out = self
            .ec2
            .describe_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .unwrap();
        out.reservations()
            .iter()
            .flat_map(aws_sdk_ec2::types::Reservation::instances)
            .map(|i| {
                (
                    i.instance_id().unwrap_or_default().to_owned(),
                    i.state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_owned())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Loads `n` tasks running `script` into `step`.
    fn load(&self, step: &str, n: usize, script: &str) {
        let mut sheet = String::from("sample,population\n");
        for i in 0..n {
            let _ = writeln!(sheet, "S{i:03},POP");
        }
        let path = self.table.file(&format!("{step}.csv"), sheet);
        // A short lease: renewals (every third of it) come often.
        self.run(&[
            "load",
            "--step",
            step,
            "--lease",
            "15s",
            "--command",
            script,
            path.to_str().unwrap(),
        ])
        .ok();
    }

    async fn tasks(&self, step: &str, n: usize) -> Vec<taskfleet::model::Task> {
        let mut out = Vec::new();
        for i in 0..n {
            let task = self
                .table
                .store
                .task(step, &format!("S{i:03}"))
                .await
                .unwrap();
            out.push(task.expect("the task exists"));
        }
        out
    }
}

/// Waits until every host's agent has exited; panics with their logs
/// after `limit`.
async fn wait_for_agents(hosts: &[Host], limit: Duration) {
    let start = Instant::now();
    while hosts.iter().any(|h| h.agent_exit().is_none()) {
        if start.elapsed() > limit {
            let logs: Vec<String> = hosts
                .iter()
                .map(|h| format!("--- {}:\n{}", h.id, h.read("agent.log").unwrap_or_default()))
                .collect();
            panic!("agents still running after {limit:?}:\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn aws_cli() -> PathBuf {
    match std::env::var_os("TASKFLEET_TEST_AWS_CLI") {
        Some(path) if Path::new(&path).exists() => PathBuf::from(path),
        _ => panic!(
            "TASKFLEET_TEST_AWS_CLI is not set to the AWS command line the instance bootstrap uses; run the tests with `bash scripts/test` (scripts/install-moto installs it beside moto)"
        ),
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

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
