//! What a script's environment holds: its sheet row, the agent's own
//! names, an allow-list of the agent's environment and the names the
//! operator passes through; never the agent's credentials or settings.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use taskfleet::model::TaskState;
use taskfleet::store::SettingsChange;

use crate::support::{Agent, TestTable, task};

fn one_attempt() -> SettingsChange {
    SettingsChange {
        max_attempts: Some(1),
        ..SettingsChange::default()
    }
}

/// Runs the step's tasks with one agent (`args`, `env` added) until it
/// is idle.
#[track_caller]
fn run_agent(t: &TestTable, args: &[&str], env: &[(&str, &str)]) {
    let mut all = vec!["--idle-timeout", "2s"];
    all.extend_from_slice(args);
    let mut agent = Agent::spawn(t, "qc", &all, env);
    assert!(
        agent.wait(Duration::from_secs(60)).success(),
        "{}",
        agent.stderr()
    );
}

/// Asserts that task `id` of step `qc` is done.
async fn assert_done(t: &TestTable, id: &str) {
    let a = task(t, "qc", id).await;
    assert_eq!(
        a.state,
        TaskState::Done,
        "{id}: {:?}\n{:?}",
        a.output_tail,
        a.history
    );
}

/// `env -0` output as a map.
fn parse_env(bytes: &[u8]) -> BTreeMap<String, String> {
    bytes
        .split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let e = String::from_utf8_lossy(e);
            let (k, v) = e.split_once('=').expect("NAME=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn a_script_sees_its_row_the_agents_names_and_the_allow_list_and_nothing_else() {
    let t = TestTable::new("cleanenv").await;
    let out = t.dir.path().join("env.out");
    let sheet = format!("sample,out\nA,{}\n", out.display());
    t.load_text("qc", r#"env -0 > "$OUT""#, &sheet, one_attempt())
        .await;
    // The agent's own environment holds test AWS credentials and
    // AGENT_LOG (from the harness) besides these.
    run_agent(
        &t,
        &[],
        &[
            ("SECRET_TOKEN", "must-not-leak"),
            ("TASKFLEET_TABLE", "must-not-leak"),
            ("LANG", "C.UTF-8"),
        ],
    );
    assert_done(&t, "A").await;
    let env = parse_env(&std::fs::read(&out).unwrap());

    let allowed: BTreeSet<&str> = [
        // The allow-list of the agent's own environment.
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "USER",
        "LOGNAME",
        // The row.
        "SAMPLE",
        "OUT", // The agent's names.
        "TASK_ID",
        "STEP",
        "ATTEMPT",
        "TASK_WORKDIR",
        "TMPDIR",
        // What bash itself exports to the commands it runs.
        "PWD",
        "SHLVL",
        "_",
    ]
    .into_iter()
    .collect();
    let extra: Vec<&String> = env
        .keys()
        .filter(|k| !allowed.contains(k.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "unexpected variables {extra:?} in {env:?}"
    );
    assert!(
        !env.keys()
            .any(|k| k.starts_with("AWS_") || k.starts_with("TASKFLEET_")),
        "{env:?}"
    );
    assert_eq!(env["SAMPLE"], "A");
    assert_eq!(env["LANG"], "C.UTF-8", "allow-listed names pass");
    assert_eq!(env["HOME"], "/nonexistent");
    assert_eq!(
        (env["TASK_ID"].as_str(), env["ATTEMPT"].as_str()),
        ("A", "1")
    );
    // TMPDIR is the attempt's own, beside its work directory.
    let work = std::path::Path::new(&env["TASK_WORKDIR"]);
    let tmp = std::path::Path::new(&env["TMPDIR"]);
    assert_eq!(tmp.parent(), work.parent(), "{env:?}");
    assert!(tmp.is_dir(), "{}", tmp.display());
}

#[tokio::test]
async fn pass_env_hands_the_named_variables_of_the_agent_to_its_scripts() {
    let t = TestTable::new("passenv").await;
    t.load_text(
        "qc",
        r#"printf '%s|%s|%s' "${RESULTS-unset}" "${OTHER-unset}" "${AWS_REGION-unset}""#,
        "sample\nA\n",
        one_attempt(),
    )
    .await;
    run_agent(
        &t,
        &["--pass-env", "RESULTS", "--pass-env", "AWS_REGION"],
        &[("RESULTS", "/data/results"), ("OTHER", "not passed")],
    );
    assert_done(&t, "A").await;
    assert_eq!(
        task(&t, "qc", "A").await.output_tail.as_deref(),
        Some("/data/results|unset|us-east-1")
    );
}

#[tokio::test]
async fn pass_env_of_a_name_the_agent_does_not_have_stops_it_with_exit_3() {
    let t = TestTable::new("passunset").await;
    t.load_text("qc", "true", "sample\nA\n", one_attempt())
        .await;
    let mut agent = Agent::spawn(&t, "qc", &["--pass-env", "RESULTS"], &[]);
    assert_eq!(agent.wait(Duration::from_secs(20)).code(), Some(3));
    let err = agent.stderr();
    assert!(
        err.contains("--pass-env RESULTS: RESULTS is not set"),
        "{err}"
    );
    assert_eq!(task(&t, "qc", "A").await.state, TaskState::Pending);
}

#[tokio::test]
async fn a_value_at_the_kernels_limit_for_one_environment_string_runs() {
    let t = TestTable::new("bigvalue").await;
    // BIG=value and its NUL: exactly the 131072 bytes execve accepts.
    let len = 131_072 - "BIG=".len() - 1;
    let sheet = format!("sample,big\nA,{}\n", "v".repeat(len));
    let script = format!(r#"[ "${{#BIG}}" -eq {len} ] && echo "got all of it""#);
    t.load_text("qc", &script, &sheet, one_attempt()).await;
    run_agent(&t, &[], &[]);
    let a = task(&t, "qc", "A").await;
    assert_eq!(
        (a.state, a.output_tail.as_deref()),
        (TaskState::Done, Some("got all of it\n")),
        "{:?}",
        a.history
    );
}
