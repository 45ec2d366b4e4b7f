//! The simulator: a table, moto's EC2 and S3, and for each instance its
//! metadata server and a sandbox in which its user-data runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use taskfleet::store::{RunningTask, TaskStore};
use testkit::{Imds, InstanceInfo};

use crate::support::{Run, TestTable, fresh_agent, moto_endpoint, taskctl_with};

/// `systemctl` as far as the bootstrap uses it.
pub(super) const SYSTEMCTL: &str = r#"#!/bin/bash
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
pub(super) const SHUTDOWN: &str = r#"#!/bin/bash
echo "shutdown $*" >>"$TASKFLEET_ROOT/poweroff"
"#;

/// One simulated instance: its metadata server and sandbox.
pub(super) struct Host {
    pub(super) id: String,
    pub(super) imds: Imds,
    pub(super) root: PathBuf,
}

impl Host {
    pub(super) fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(name)).ok()
    }

    /// The agent's exit code, once it has exited.
    pub(super) fn agent_exit(&self) -> Option<i32> {
        self.read("agent.exit").and_then(|s| s.trim().parse().ok())
    }

    pub(super) fn powered_off(&self) -> bool {
        self.read("poweroff").is_some()
    }
}

/// A table, a bucket with the agent published in it, a launch template
/// naming pattern of the test's own, and clients of moto.
pub(super) struct Sim {
    pub(super) table: TestTable,
    pub(super) dir: tempfile::TempDir,
    pub(super) pattern: String,
    pub(super) bucket: String,
    pub(super) version: String,
    pub(super) moto: String,
    pub(super) ec2: aws_sdk_ec2::Client,
    pub(super) s3: aws_sdk_s3::Client,
    pub(super) bin: PathBuf,
}

impl Sim {
    pub(super) async fn new(label: &str) -> Self {
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
    pub(super) fn run(&self, args: &[&str]) -> Run {
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
    pub(super) async fn fleet(
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
    pub(super) async fn wait_running(
        &self,
        enough: impl Fn(&[RunningTask]) -> bool,
    ) -> Vec<RunningTask> {
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
    pub(super) fn publish(&self, binary: &Path) -> Run {
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
    pub(super) fn apply_template(&self, step: &str, tags: &[(&str, &str)]) {
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
    pub(super) fn launch(&self, step: &str, count: usize) -> Vec<String> {
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
    pub(super) async fn boot(&self, id: &str) -> (Host, std::process::Output) {
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
    pub(super) async fn boot_all(&self, ids: &[String]) -> Vec<Host> {
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
    pub(super) async fn mirror_tags(&self, hosts: &[Host]) {
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
    pub(super) async fn states(&self, ids: &[String]) -> BTreeMap<String, String> {
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
    pub(super) fn load(&self, step: &str, n: usize, script: &str) {
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

    pub(super) async fn tasks(&self, step: &str, n: usize) -> Vec<taskfleet::model::Task> {
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
pub(super) async fn wait_for_agents(hosts: &[Host], limit: Duration) {
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

pub(super) fn aws_cli() -> PathBuf {
    match std::env::var_os("TASKFLEET_TEST_AWS_CLI") {
        Some(path) if Path::new(&path).exists() => PathBuf::from(path),
        _ => panic!(
            "TASKFLEET_TEST_AWS_CLI is not set to the AWS command line the instance bootstrap uses; run the tests with `bash scripts/test` (scripts/install-moto installs it beside moto)"
        ),
    }
}

pub(super) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(super) fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
