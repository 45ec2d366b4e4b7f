//! The EC2 fleet end to end: `template apply`, `launch`, `fleet` and `stop`
//! driving the real binary against moto (EC2) and DynamoDB Local (tasks).
//!
//! moto launches only `MinCount` instances and ignores `ClientToken`, spot
//! and metadata options: these tests check what taskctl sends and what
//! moto keeps (templates, versions, user-data, tags, instance states),
//! not EC2's own handling of those options.

use std::path::{Path, PathBuf};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{Filter, Instance};
use taskfleet::model::TaskState;
use taskfleet::store::{Claim, Order, SettingsChange, TaskStore};
use taskfleet::time::Timestamp;

use crate::support::{Run, TestTable, moto_endpoint, taskctl_with};

mod templates;

/// A table on DynamoDB Local, template files in a directory of the test's
/// own, and a template naming pattern no other test uses (moto's templates
/// are shared by every test).
struct Fleet {
    table: TestTable,
    dir: tempfile::TempDir,
    pattern: String,
    moto: String,
    ec2: aws_sdk_ec2::Client,
}

impl Fleet {
    async fn new(label: &str) -> Self {
        let moto = moto_endpoint();
        let table = TestTable::new(label).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("launch-templates")).unwrap();
        std::fs::create_dir_all(dir.path().join("userdata")).unwrap();
        std::fs::copy(
            repo().join("userdata/bootstrap.sh"),
            dir.path().join("userdata/bootstrap.sh"),
        )
        .unwrap();
        let conf = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&moto)
            .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
            .build();
        Self {
            pattern: format!("{}-{{step}}", table.name),
            table,
            dir,
            moto: moto.clone(),
            ec2: aws_sdk_ec2::Client::from_conf(conf),
        }
    }

    fn template_name(&self, step: &str) -> String {
        self.pattern.replace("{step}", step)
    }

    fn templates_dir(&self) -> PathBuf {
        self.dir.path().join("launch-templates")
    }

    fn userdata_dir(&self) -> PathBuf {
        self.dir.path().join("userdata")
    }

    /// A valid template file for `step` (no security groups: moto would
    /// want them to exist).
    fn write_template(&self, step: &str, instance_type: &str) {
        let text = format!(
            r#"{{
  "UserDataFile": "bootstrap.sh",
  "ImageId": "${{TEST_AMI}}",
  "InstanceType": "{instance_type}",
  "MetadataOptions": {{ "HttpEndpoint": "enabled", "HttpTokens": "required",
                        "HttpPutResponseHopLimit": 1, "InstanceMetadataTags": "enabled" }},
  "InstanceInitiatedShutdownBehavior": "terminate",
  "TagSpecifications": [{{ "ResourceType": "instance", "Tags": [{{ "Key": "team", "Value": "popgen" }}] }}]
}}"#
        );
        std::fs::write(self.templates_dir().join(format!("{step}.json")), text).unwrap();
    }

    /// `taskctl` on this table, with EC2 at moto through the environment.
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
                ("TEST_AMI", "ami-12c6146b"),
            ],
        )
    }

    fn apply(&self, step: &str, extra: &[&str]) -> Run {
        let templates = self.templates_dir();
        let userdata = self.userdata_dir();
        let mut args = vec![
            "template",
            "apply",
            "--step",
            step,
            "--templates-dir",
            templates.to_str().unwrap(),
            "--userdata-dir",
            userdata.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Loads `n` pending tasks into `step` (one shard).
    async fn load(&self, step: &str, n: usize) {
        self.table
            .load_generated(
                step,
                "true",
                n,
                SettingsChange {
                    shards: Some(1),
                    ..SettingsChange::default()
                },
            )
            .await;
    }

    /// Claims one pending task of `step` as `owner`; returns its id.
    async fn claim_one(&self, step: &str, owner: &str) -> String {
        let store = &self.table.store;
        let meta = store.step(step).await.unwrap().unwrap();
        let now = Timestamp::now();
        let candidate = store
            .candidates(&meta, 0, TaskState::Pending, now, 1, Order::OldestFirst)
            .await
            .unwrap()
            .remove(0);
        match store.claim(&meta, &candidate, owner, now).await.unwrap() {
            Claim::Claimed(task) => task.task_id,
            other => panic!("claim lost: {other:?}"),
        }
    }

    /// The step's instances in moto, terminated ones included.
    async fn instances(&self, step: &str) -> Vec<Instance> {
        self.ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag:taskfleet:table")
                    .values(&self.table.name)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("tag:taskfleet:step")
                    .values(step)
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .reservations()
            .iter()
            .flat_map(|r| r.instances().to_vec())
            .collect()
    }

    async fn running_ids(&self, step: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .instances(step)
            .await
            .iter()
            .filter(|i| {
                i.state().and_then(|s| s.name()).map(AsRef::<str>::as_ref) == Some("running")
            })
            .map(|i| i.instance_id().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tag(instance: &Instance, key: &str) -> Option<String> {
    instance
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value().map(ToOwned::to_owned))
}

fn bootstrap_base64() -> String {
    aws_smithy_types::base64::encode(std::fs::read(repo().join("userdata/bootstrap.sh")).unwrap())
}

#[tokio::test]
// One scenario end to end: the instances launched are the ones listed and
// then terminated.
#[allow(clippy::too_many_lines)]
async fn launch_is_capped_by_claimable_tasks_and_max_instances_and_fleet_and_stop_now_see_the_instances()
 {
    let f = Fleet::new("launch").await;
    f.load("align", 3).await;
    f.load("qc", 3).await;
    for step in ["align", "qc"] {
        f.write_template(step, "c6i.large");
        f.apply(step, &[]).ok();
    }

    // --dry-run: says what and why, launches nothing.
    let dry = f.run(&["launch", "--step", "align", "--count", "5", "--dry-run"]);
    let out = dry.ok().stdout();
    assert!(
        out.contains("would launch on-demand 3 instances of step 'align'")
            && out.contains("asked for 5, capped at 3: the step has 3 claimable tasks"),
        "{out}"
    );
    assert!(f.instances("align").await.is_empty(), "--dry-run launched");

    // 5 asked, 3 claimable tasks, 1 slot: 3.
    let launched = f.run(&["launch", "--step", "align", "--count", "5", "--json"]);
    let record = launched.ok().json();
    assert_eq!(record["count"], 3, "{record}");
    let mut ids: Vec<String> = record["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, f.running_ids("align").await);
    let launch_id = record["launch_id"].as_str().unwrap();
    for i in f.instances("align").await {
        assert_eq!(tag(&i, "Name").as_deref(), Some("align"));
        assert_eq!(tag(&i, "taskfleet:table"), Some(f.table.name.clone()));
        assert_eq!(tag(&i, "taskfleet:launch-id").as_deref(), Some(launch_id));
        assert_eq!(
            tag(&i, "team").as_deref(),
            Some("popgen"),
            "the template's tags"
        );
        let user_data = f
            .ec2
            .describe_instance_attribute()
            .instance_id(i.instance_id().unwrap())
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        assert_eq!(
            user_data.user_data().and_then(|u| u.value()),
            Some(bootstrap_base64().as_str()),
            "the template's user-data"
        );
    }

    // --max-instances 2 on a step with none yet: 2.
    let human = f.run(&[
        "launch",
        "--step",
        "qc",
        "--count",
        "5",
        "--max-instances",
        "2",
    ]);
    let out = human.ok().stdout();
    assert!(
        out.contains("launched on-demand 2 instances of step 'qc'"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("i-")).count(),
        2,
        "{out}"
    );
    assert_eq!(f.running_ids("qc").await.len(), 2);
    // ... counting those already running: room for 1 more under 3.
    let more = f.run(&[
        "launch",
        "--step",
        "qc",
        "--count",
        "5",
        "--max-instances",
        "3",
        "--json",
    ]);
    let record = more.ok().json();
    assert_eq!(record["count"], 1, "{record}");
    assert!(
        record["reasons"][1]
            .as_str()
            .unwrap()
            .contains("--max-instances 3 with 2 instances of the step already pending or running"),
        "{record}"
    );
    // ... and none when full.
    let full = f.run(&[
        "launch",
        "--step",
        "qc",
        "--count",
        "5",
        "--max-instances",
        "3",
    ]);
    assert!(
        full.ok()
            .stdout()
            .starts_with("launched nothing for step 'qc'"),
        "{}",
        full.stdout()
    );
    assert_eq!(f.running_ids("qc").await.len(), 3);
    // The second launch took the place past the first's two, so that the
    // agents of both start spread over the step as one launch's do.
    let mut places: Vec<i32> = f
        .instances("qc")
        .await
        .iter()
        .map(|i| {
            tag(i, "taskfleet:first-place")
                .expect("every launch tags its first place")
                .parse::<i32>()
                .unwrap()
                + i.ami_launch_index().unwrap()
        })
        .collect();
    places.sort_unstable();
    assert_eq!(places, [0, 1, 2]);

    // fleet: the instances of each step, and the task a worker on one holds.
    let task = f.claim_one("align", &format!("{}/w1", ids[0])).await;
    let fleet = f.run(&["fleet", "--json"]);
    let rows = fleet.ok().json();
    let ec2_rows: Vec<_> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "ec2")
        .collect();
    assert_eq!(ec2_rows.len(), 6, "{rows}");
    let first = ec2_rows
        .iter()
        .find(|r| r["instance_id"] == ids[0].as_str())
        .unwrap();
    assert_eq!(first["step"], "align");
    assert_eq!(first["state"], "running");
    assert_eq!(first["spot"], false);
    assert_eq!(first["tasks"], serde_json::json!([task]));
    // Its claim just now is its last lease renewal.
    assert!(
        first["last_heartbeat_seconds"]
            .as_i64()
            .is_some_and(|s| (0..60).contains(&s)),
        "{first}"
    );
    let idle = ec2_rows
        .iter()
        .find(|r| r["instance_id"] == ids[1].as_str())
        .unwrap();
    assert!(idle["last_heartbeat_seconds"].is_null(), "{idle}");
    let human = f.run(&["fleet", "--step", "align"]).ok().stdout();
    assert!(
        human.contains(&ids[0]) && human.contains("on-demand") && human.contains(&task),
        "{human}"
    );
    assert!(
        !human.contains(" qc "),
        "--step align shows align only: {human}"
    );

    // stop without --now tags the instances to drain, and terminates
    // none: their agents end them.
    let soft = f.run(&["stop", "--step", "align"]);
    assert!(
        soft.ok()
            .stdout()
            .contains("draining 3 EC2 instances of step 'align'")
            && soft.stdout().contains("--now"),
        "{}",
        soft.stdout()
    );
    assert_eq!(f.running_ids("align").await.len(), 3);
    for instance in f.instances("align").await {
        assert!(tag(&instance, "taskfleet:drain").is_some(), "{instance:?}");
    }

    // stop --now terminates the step's instances, and only them.
    let now = f.run(&["stop", "--step", "align", "--now"]);
    assert!(
        now.ok()
            .stdout()
            .contains("terminated 3 EC2 instances of step 'align'"),
        "{}",
        now.stdout()
    );
    for i in f.instances("align").await {
        assert_eq!(
            i.state().and_then(|s| s.name()).map(AsRef::<str>::as_ref),
            Some("terminated"),
            "{i:?}"
        );
    }
    assert_eq!(
        f.running_ids("qc").await.len(),
        3,
        "another step's instances stay"
    );
    let after = f.run(&["fleet", "--step", "align", "--json"]).ok().json();
    assert_eq!(
        after,
        serde_json::json!([]),
        "terminated instances leave the fleet"
    );
}

#[tokio::test]
async fn a_missing_template_an_unknown_step_and_a_step_with_nothing_to_do_each_get_one_sentence() {
    let f = Fleet::new("launcherr").await;
    f.load("align", 1).await;

    let err = f
        .run(&["launch", "--step", "align", "--count", "2"])
        .fails();
    assert_eq!(
        err.trim(),
        format!(
            "error: there is no launch template '{}' for step 'align'; create it with `taskctl template apply --step align`",
            f.template_name("align")
        )
    );

    let err = f.run(&["launch", "--step", "nope", "--count", "2"]).fails();
    assert!(
        err.starts_with("error: step 'nope' does not exist"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    f.write_template("align", "c6i.large");
    f.apply("align", &[]).ok();
    f.claim_one("align", "i-0000000000000000/w1").await;
    let idle = f.run(&["launch", "--step", "align", "--count", "2"]);
    let out = idle.ok().stdout();
    assert_eq!(
        out.trim(),
        "launched nothing for step 'align' (asked for 2, capped at 0: the step has 0 claimable tasks and each instance runs 1 at a time, so it can use 0)"
    );
    assert!(f.instances("align").await.is_empty());
}
