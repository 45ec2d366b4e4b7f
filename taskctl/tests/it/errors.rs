//! Environment problems get one sentence saying what is wrong and what to
//! do, never a stack of debug text.

use crate::support::{Taskctl, TestTable, taskctl_with, unique_table};

#[test]
fn a_table_that_does_not_exist_says_to_run_init() {
    let name = unique_table("absent");
    let endpoint = crate::support::endpoint();
    let err = taskctl_with(
        &["--table", &name, "status"],
        &[("TASKFLEET_ENDPOINT", endpoint.as_str())],
    )
    .fails();
    assert_eq!(
        err.trim(),
        format!(
            "error: table '{name}' does not exist at {endpoint}; create it with `taskctl init --table {name}`"
        )
    );
}

#[tokio::test]
async fn exit_codes_say_what_kind_of_error_it_was() {
    let endpoint = crate::support::endpoint();
    let code = |args: &[&str], env: &[(&str, &str)]| {
        let run = taskctl_with(args, env);
        assert!(!run.output.status.success(), "{}", run.stdout());
        run.code()
    };
    let at = [("TASKFLEET_ENDPOINT", endpoint.as_str())];
    // Setup: no table, no credentials.
    let absent = unique_table("absent-code");
    assert_eq!(code(&["--table", &absent, "status"], &at), Some(3));
    assert_eq!(
        code(
            &["--table", "dynamodb://anything", "status"],
            &[
                ("TASKFLEET_ENDPOINT", endpoint.as_str()),
                ("AWS_ACCESS_KEY_ID", ""),
                ("AWS_SECRET_ACCESS_KEY", "")
            ]
        ),
        Some(3)
    );
    // Unavailable: nothing listens there.
    assert_eq!(
        code(
            &["--table", "dynamodb://nowhere", "status"],
            &[("TASKFLEET_ENDPOINT", "http://127.0.0.1:9")]
        ),
        Some(4)
    );
    // Input refused: a bad sheet, a bad step name.
    let t = TestTable::new("codes").await;
    let dup = t.file("dup.csv", "sample\nA\nA\n");
    let load = |step: &str, sheet: &std::path::Path| {
        let run = t.taskctl(&[
            "load",
            "--step",
            step,
            "--command",
            "true",
            sheet.to_str().unwrap(),
        ]);
        run.code()
    };
    assert_eq!(load("qc", &dup), Some(6));
    let ok = t.file("ok.csv", "sample\nA\n");
    assert_eq!(load("9-not-a-step", &ok), Some(6));
    // Usage: clap's own.
    assert_eq!(code(&["status", "--no-such-flag"], &at), Some(2));
}

#[tokio::test]
async fn loading_into_a_table_that_does_not_exist_writes_nothing_and_says_to_run_init() {
    let t = TestTable::new("noload").await;
    let sheet = t.file("s.csv", "sample\nA\n");
    let name = unique_table("absent-load");
    let endpoint = crate::support::endpoint();
    let err = taskctl_with(
        &[
            "--table",
            &name,
            "load",
            "--step",
            "a",
            "--command",
            "true",
            sheet.to_str().unwrap(),
        ],
        &[("TASKFLEET_ENDPOINT", endpoint.as_str())],
    )
    .fails();
    assert!(
        err.contains(&format!("table '{name}' does not exist")),
        "{err}"
    );
}

#[test]
fn an_unreachable_endpoint_is_one_clear_line() {
    // Port 9 (discard) on loopback: nothing listens there.
    let err = taskctl_with(
        &["--table", "dynamodb://nowhere", "status"],
        &[("TASKFLEET_ENDPOINT", "http://127.0.0.1:9")],
    )
    .fails();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach DynamoDB at http://127.0.0.1:9"),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");
}

#[test]
fn missing_credentials_are_named_as_such() {
    let endpoint = crate::support::endpoint();
    let err = taskctl_with(
        &["--table", "dynamodb://anything", "status"],
        &[
            ("TASKFLEET_ENDPOINT", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
        ],
    )
    .fails();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: no AWS credentials found"), "{err}");
}

#[test]
fn a_missing_region_is_named_as_such() {
    let endpoint = crate::support::endpoint();
    let err = taskctl_with(
        &["--table", "dynamodb://anything", "status"],
        &[
            ("TASKFLEET_ENDPOINT", endpoint.as_str()),
            ("AWS_REGION", ""),
        ],
    )
    .fails();
    assert_eq!(
        err.trim(),
        "error: no AWS region configured; set AWS_REGION or pass --region"
    );
}

#[tokio::test]
async fn an_unknown_step_and_an_unknown_task_are_named() {
    let t = TestTable::new("unknown").await;
    let err = t.taskctl(&["status", "--step", "nope"]).fails();
    assert!(err.contains("step 'nope' does not exist"), "{err}");
    let sheet = t.file("s.csv", "sample\nA\n");
    t.taskctl(&[
        "load",
        "--step",
        "qc",
        "--command",
        "true",
        sheet.to_str().unwrap(),
    ])
    .ok();
    let err = t.taskctl(&["show", "qc", "B"]).fails();
    assert!(err.contains("step 'qc' has no task 'B'"), "{err}");
}

#[test]
fn a_missing_embedded_store_says_to_run_init() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nothing-here.db");
    let locator = format!("sqlite://{}", db.display());
    let err = taskctl_with(&["--table", &locator, "status"], &[]).fails();
    assert_eq!(
        err.trim(),
        format!(
            "error: there is no task store at {0}; create it with `taskctl --table sqlite://{0} init` (or just `taskctl init` for the default)",
            db.display()
        )
    );
    assert!(!db.exists(), "status must not create the store");
}
