//! The terraform module applied for real: `terraform apply` with the AWS
//! provider pointed at DynamoDB Local (the table) and moto (S3, IAM, EC2),
//! the IAM policies it made compared with the calls the code makes
//! (`taskfleet::iam`), tasks loaded, run by an agent and reported on the
//! table it made, the agent published to its bucket, its launch template
//! checked, then `terraform destroy`.
//!
//! The provider comes from the local plugin directory that
//! `scripts/test` finds (`TASKFLEET_TEST_TF_PLUGIN_DIR`); without it this
//! test fails saying so, it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use taskfleet::iam::{self, Caller};

use crate::support::{fresh_agent, moto_endpoint, moto_s3, taskctl_with, unique_table};

/// A root configuration in a directory of its own that uses the
/// repository's `terraform/` module, with the provider at the emulators.
struct Root {
    dir: tempfile::TempDir,
    plugins: String,
}

impl Root {
    fn new(table: &str, bucket: &str, dynamodb: &str, moto: &str) -> Self {
        let plugins = std::env::var("TASKFLEET_TEST_TF_PLUGIN_DIR").unwrap_or_else(|_| {
            panic!(
                "TASKFLEET_TEST_TF_PLUGIN_DIR is not set: this test needs terraform's hashicorp/aws \
                 provider in a local plugin directory. Run it with `bash scripts/test`, which finds it."
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let module = repo().join("terraform");
        let config = format!(
            r#"
provider "aws" {{
  region                      = "us-east-1"
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  s3_use_path_style           = true
  endpoints {{
    dynamodb = "{dynamodb}"
    s3       = "{moto}"
    iam      = "{moto}"
    ec2      = "{moto}"
    sts      = "{moto}"
  }}
}}

variable "tls_only" {{
  type    = bool
  default = true
}}

module "taskfleet" {{
  source                  = "{module}"
  deny_insecure_transport = var.tls_only
  table_name           = "{table}"
  bucket_name          = "{bucket}"
  name_prefix          = "{table}"
  # An absolute source is copied under .terraform/: name the repository's
  # template and user-data directories.
  launch_templates_dir = "{templates}"
  userdata_dir         = "{userdata}"
  template_name_format = "{table}-%s"
  force_destroy        = true
  # DynamoDB Local has no UpdateContinuousBackups.
  point_in_time_recovery = false
  template_variables = {{
    TASKFLEET_AMI            = "ami-12c6146b"
    TASKFLEET_SECURITY_GROUP = "sg-12345678"
    TASKFLEET_AGENT_VERSION  = "{version}"
  }}
}}

output "taskfleet" {{
  value = module.taskfleet
}}
"#,
            module = module.display(),
            templates = repo().join("launch-templates").display(),
            userdata = repo().join("userdata").display(),
            version = env!("CARGO_PKG_VERSION"),
        );
        std::fs::write(dir.path().join("main.tf"), config).unwrap();
        Self { dir, plugins }
    }

    /// Runs `terraform ARGS` in the root; its stdout.
    #[track_caller]
    fn terraform(&self, args: &[&str]) -> String {
        let out = Command::new("terraform")
            .args(args)
            .current_dir(self.dir.path())
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap_or_else(|e| panic!("cannot run terraform ({e}); it is needed for this test"));
        assert!(
            out.status.success(),
            "terraform {} failed ({}):\n{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn init(&self) {
        self.terraform(&[
            "init",
            "-input=false",
            "-no-color",
            &format!("-plugin-dir={}", self.plugins),
        ]);
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The policy document in output `name`.
#[track_caller]
fn policy(outputs: &serde_json::Value, name: &str) -> serde_json::Value {
    let text = outputs[name]
        .as_str()
        .unwrap_or_else(|| panic!("output {name} is missing: {outputs}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{name} is not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn terraform_makes_a_fleet_that_loads_runs_reports_and_is_destroyed() {
    let dynamodb = crate::support::endpoint();
    let moto = moto_endpoint();
    let table = unique_table("tf");
    let bucket = table.to_lowercase().replace('_', "-");
    let root = Root::new(&table, &bucket, &dynamodb, &moto);
    root.init();
    root.terraform(&["apply", "-auto-approve", "-no-color"]);
    let outputs: serde_json::Value =
        serde_json::from_str(&root.terraform(&["output", "-json", "taskfleet"])).unwrap();

    // The policies grant exactly what each binary calls.
    iam::compare(
        &iam::actions(Caller::Agent),
        &policy(&outputs, "agent_policy_json"),
    )
    .unwrap_or_else(|e| panic!("the agent role's policy and taskfleet::iam::AGENT differ: {e}"));
    iam::compare(
        &iam::actions(Caller::Operator),
        &policy(&outputs, "operator_policy_json"),
    )
    .unwrap_or_else(|e| panic!("the operator policy and taskfleet::iam::OPERATOR differ: {e}"));
    assert_eq!(outputs["table_name"], table.as_str());
    assert_eq!(outputs["bucket_name"], bucket.as_str());

    run_tasks(&table, &dynamodb);

    publish_to(&root, &bucket, &moto);
    let s3 = moto_s3(&moto);
    let key = format!("taskfleet/agent/{}/agent.sha256", env!("CARGO_PKG_VERSION"));
    s3.head_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("s3://{bucket}/{key} is missing: {e:?}"));

    // The launch template made from launch-templates/align.json and
    // userdata/bootstrap.sh, with the module's instance profile.
    let ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new("us-east-1"))
            .endpoint_url(&moto)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .build(),
    );
    let name = format!("{table}-align");
    assert_eq!(
        outputs["launch_template_names"]["align"], name,
        "one template per file in launch-templates/: {outputs}"
    );
    let versions = ec2
        .describe_launch_template_versions()
        .launch_template_name(&name)
        .versions("$Default")
        .send()
        .await
        .unwrap_or_else(|e| panic!("launch template {name} is missing: {e:?}"));
    let data = versions.launch_template_versions()[0]
        .launch_template_data()
        .expect("template data")
        .clone();
    assert_eq!(data.image_id(), Some("ami-12c6146b"));
    assert_eq!(
        data.user_data(),
        Some(
            aws_smithy_types::base64::encode(
                std::fs::read(repo().join("userdata/bootstrap.sh")).unwrap()
            )
            .as_str()
        ),
        "the template's user-data is not userdata/bootstrap.sh"
    );
    assert_eq!(
        data.iam_instance_profile().and_then(|p| p.name()),
        outputs["agent_instance_profile_name"].as_str()
    );

    // Destroyed: the table is gone, and taskctl says so.
    root.terraform(&["destroy", "-auto-approve", "-no-color"]);
    let env = [("TASKFLEET_ENDPOINT", dynamodb.as_str())];
    let gone = taskctl_with(&["--table", &table, "status"], &env);
    let stderr = gone.fails();
    assert_eq!(gone.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&table), "{stderr}");
}

/// Tasks on the table terraform made: load, run by an agent, status.
fn run_tasks(table: &str, dynamodb: &str) {
    let env = [("TASKFLEET_ENDPOINT", dynamodb)];
    let work = tempfile::tempdir().unwrap();
    let sheet = work.path().join("samples.csv");
    std::fs::write(&sheet, "sample,reads\nS1,10\nS2,20\nS3,30\n").unwrap();
    taskctl_with(
        &[
            "--table",
            table,
            "load",
            "--step",
            "align",
            "--command",
            "echo $SAMPLE $READS",
            sheet.to_str().unwrap(),
        ],
        &env,
    )
    .ok();
    let agent = Command::new(fresh_agent())
        .env_clear()
        .envs(testkit::child_env())
        .args(["--table", table, "--endpoint-url", dynamodb])
        .args(["--step", "align", "--idle-timeout", "1s"])
        .arg("--work-dir")
        .arg(work.path().join("work"))
        .arg("--log-dir")
        .arg(work.path().join("logs"))
        .output()
        .unwrap();
    assert!(
        agent.status.success(),
        "agent failed: {}",
        String::from_utf8_lossy(&agent.stderr)
    );
    let status = taskctl_with(
        &["--table", table, "status", "--step", "align", "--json"],
        &env,
    );
    let status = status.ok().json();
    assert_eq!(status[0]["total"], 3, "{status}");
    assert_eq!(status[0]["done"], 3, "{status}");
}

/// The bucket refuses plain HTTP (its TLS-only policy, which moto
/// enforces); with the policy off, the agent is published to it.
fn publish_to(root: &Root, bucket: &str, moto: &str) {
    let publish = || {
        taskctl_with(
            &[
                "agent",
                "publish",
                "--binary",
                fresh_agent().to_str().unwrap(),
                "--bucket",
                bucket,
                "--s3-endpoint-url",
                moto,
            ],
            &[],
        )
    };
    let refused = publish();
    let err = refused.fails();
    assert!(err.contains("no permission to read"), "{err}");
    // Only the policy: DynamoDB Local does not report the table's
    // encryption back, so a whole apply would try to set it again.
    root.terraform(&[
        "apply",
        "-auto-approve",
        "-no-color",
        "-var",
        "tls_only=false",
        "-target",
        "module.taskfleet.aws_s3_bucket_policy.this",
    ]);
    publish().ok();
}
