//! `taskctl template apply`: a launch template per step, versioned only
//! when its file changes, and refused when it would let instances outlive
//! their agents.

use super::{Fleet, bootstrap_base64, repo};

#[tokio::test]
async fn template_apply_creates_once_adds_a_version_only_when_the_file_changes_and_dry_run_changes_nothing()
 {
    let f = Fleet::new("tmpl").await;
    let name = f.template_name("align");
    f.write_template("align", "c6i.large");

    let dry = f.apply("align", &["--dry-run"]);
    assert!(
        dry.ok()
            .stdout()
            .contains(&format!("would create launch template '{name}'")),
        "{}",
        dry.stdout()
    );
    let err = f
        .ec2
        .describe_launch_templates()
        .launch_template_names(&name)
        .send()
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("NotFound"), "{err:?}");

    let created = f.apply("align", &[]);
    assert!(
        created
            .ok()
            .stdout()
            .contains(&format!("created launch template '{name}' (version 1)")),
        "{}",
        created.stdout()
    );
    let versions = |f: &Fleet| {
        let ec2 = f.ec2.clone();
        let name = name.clone();
        async move {
            ec2.describe_launch_template_versions()
                .launch_template_name(&name)
                .send()
                .await
                .unwrap()
                .launch_template_versions()
                .to_vec()
        }
    };
    let v = versions(&f).await;
    assert_eq!(v.len(), 1);
    let data = v[0].launch_template_data().unwrap();
    assert_eq!(
        data.user_data(),
        Some(bootstrap_base64().as_str()),
        "user-data from userdata/"
    );
    assert_eq!(data.image_id(), Some("ami-12c6146b"), "variable filled in");

    let again = f.apply("align", &[]);
    assert!(
        again.ok().stdout().contains("is up to date"),
        "{}",
        again.stdout()
    );
    assert_eq!(versions(&f).await.len(), 1, "unchanged: no new version");

    f.write_template("align", "c6i.xlarge");
    let dry = f.apply("align", &["--dry-run"]);
    assert!(
        dry.ok().stdout().contains("would add version 2"),
        "{}",
        dry.stdout()
    );
    assert_eq!(versions(&f).await.len(), 1, "--dry-run adds no version");

    let changed = f.apply("align", &[]);
    assert!(
        changed.ok().stdout().contains("added version 2")
            && changed.stdout().contains("made it the default"),
        "{}",
        changed.stdout()
    );
    let template = f
        .ec2
        .describe_launch_templates()
        .launch_template_names(&name)
        .send()
        .await
        .unwrap()
        .launch_templates()[0]
        .clone();
    assert_eq!(
        (
            template.latest_version_number(),
            template.default_version_number()
        ),
        (Some(2), Some(2))
    );
    let v = versions(&f).await;
    let newest = v.iter().find(|v| v.version_number() == Some(2)).unwrap();
    assert_eq!(
        newest
            .launch_template_data()
            .unwrap()
            .instance_type()
            .map(AsRef::<str>::as_ref),
        Some("c6i.xlarge")
    );
}

#[tokio::test]
async fn the_shipped_example_applies_with_its_variables_and_an_unset_one_is_named() {
    let f = Fleet::new("example").await;
    let templates = repo().join("launch-templates");
    let userdata = repo().join("userdata");
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "template".to_owned(),
            "apply".into(),
            "--step".into(),
            "align".into(),
            "--templates-dir".into(),
            templates.display().to_string(),
            "--userdata-dir".into(),
            userdata.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let run = |a: Vec<String>| f.run(&a.iter().map(String::as_str).collect::<Vec<_>>());

    let err = run(args(&["--var", "TASKFLEET_AMI=ami-12c6146b"])).fails();
    assert!(
        err.contains(
            "uses ${TASKFLEET_INSTANCE_PROFILE}, ${TASKFLEET_SECURITY_GROUP}, ${TASKFLEET_AGENT_BUCKET}, ${TASKFLEET_AGENT_VERSION}, which are not set"
        ) && err.contains("--var NAME=VALUE"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    run(args(&[
        "--var",
        "TASKFLEET_AMI=ami-12c6146b",
        "--var",
        "TASKFLEET_INSTANCE_PROFILE=taskfleet-worker",
        "--var",
        "TASKFLEET_SECURITY_GROUP=sg-0123456789abcdef0",
        "--var",
        "TASKFLEET_AGENT_BUCKET=my-bucket",
        "--var",
        "TASKFLEET_AGENT_VERSION=0.1.0",
    ]))
    .ok();
    let v = f
        .ec2
        .describe_launch_template_versions()
        .launch_template_name(f.template_name("align"))
        .versions("$Default")
        .send()
        .await
        .unwrap();
    let data = v.launch_template_versions()[0]
        .launch_template_data()
        .unwrap();
    assert_eq!(data.user_data(), Some(bootstrap_base64().as_str()));
    let md = data.metadata_options().unwrap();
    assert_eq!(md.http_tokens().map(AsRef::<str>::as_ref), Some("required"));
    assert_eq!(md.http_put_response_hop_limit(), Some(1));
    assert_eq!(
        md.instance_metadata_tags().map(AsRef::<str>::as_ref),
        Some("enabled")
    );
    assert_eq!(
        data.instance_initiated_shutdown_behavior()
            .map(AsRef::<str>::as_ref),
        Some("terminate")
    );
    // What the bootstrap reads from the instance's tags, defaults filled.
    let tags: std::collections::BTreeMap<&str, &str> = data
        .tag_specifications()
        .iter()
        .flat_map(aws_sdk_ec2::types::LaunchTemplateTagSpecification::tags)
        .map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default()))
        .collect();
    assert_eq!(tags.get("taskfleet:agent-bucket"), Some(&"my-bucket"));
    assert_eq!(tags.get("taskfleet:agent-version"), Some(&"0.1.0"));
    assert_eq!(tags.get("taskfleet:idle-timeout"), Some(&"5m"));
    assert_eq!(tags.get("taskfleet:grace"), Some(&"60s"));
}

#[tokio::test]
async fn a_template_that_lets_instances_outlive_a_shutdown_is_refused() {
    let f = Fleet::new("refuse").await;
    f.write_template("align", "c6i.large");
    let path = f.templates_dir().join("align.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"terminate\"", "\"stop\"");
    std::fs::write(&path, text).unwrap();
    let err = f.apply("align", &[]).fails();
    assert!(
        err.contains("InstanceInitiatedShutdownBehavior must be \"terminate\""),
        "{err}"
    );
}
