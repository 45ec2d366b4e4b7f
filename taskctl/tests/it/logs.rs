//! Attempt logs: uploaded to S3 (moto) by the real agent binary while a
//! task runs and when it ends, and printed back by `taskctl logs` from S3
//! or from the embedded store's files.

use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use taskfleet::fleet::hex;

use crate::support::{Taskctl, TestTable, fresh_agent, moto_endpoint, moto_s3, taskctl_with};

/// A table with a bucket of its own in moto.
struct Logged {
    table: TestTable,
    bucket: String,
    moto: String,
    s3: aws_sdk_s3::Client,
    dir: tempfile::TempDir,
}

impl Logged {
    async fn new(label: &str) -> Self {
        let table = TestTable::new(label).await;
        let moto = moto_endpoint();
        let s3 = moto_s3(&moto);
        let bucket = table.name.to_ascii_lowercase().replace('_', "-");
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        Self {
            table,
            bucket,
            moto,
            s3,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Loads `n` rows (`sample` = S1...) into `step` running `command`.
    fn load(&self, step: &str, command: &str, n: usize, extra: &[&str]) {
        let sheet = self.dir.path().join(format!("{step}.csv"));
        let rows: String = (1..=n).fold(String::new(), |mut rows, i| {
            let _ = writeln!(rows, "S{i}");
            rows
        });
        std::fs::write(&sheet, format!("sample\n{rows}")).unwrap();
        let mut args = vec!["load", "--step", step, "--command", command];
        args.extend_from_slice(extra);
        args.push(sheet.to_str().unwrap());
        self.table.taskctl(&args).ok();
    }

    /// The agent binary on `step`, uploading logs to the bucket.
    fn agent(&self, step: &str, extra: &[&str]) -> Child {
        Command::new(fresh_agent())
            .env_clear()
            .envs(testkit::child_env())
            .args(["--table", &self.table.name])
            .args(["--endpoint-url", &self.table.endpoint])
            .args(["--step", step, "--log-bucket", &self.bucket])
            .args(["--s3-endpoint-url", &self.moto])
            .arg("--work-dir")
            .arg(self.dir.path().join("work"))
            .arg("--log-dir")
            .arg(self.dir.path().join("logs"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    async fn object(&self, key: &str) -> Option<Vec<u8>> {
        let out = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        match out {
            Ok(o) => Some(o.body.collect().await.unwrap().into_bytes().to_vec()),
            Err(_) => None,
        }
    }

    fn show(&self, step: &str, id: &str) -> serde_json::Value {
        self.table
            .taskctl(&["show", step, id, "--json"])
            .ok()
            .json()
    }

    fn logs(&self, step: &str, id: &str) -> Vec<u8> {
        self.table
            .taskctl(&["logs", step, id, "--s3-endpoint-url", &self.moto])
            .ok()
            .output
            .stdout
            .clone()
    }
}

/// The key of a log URI in `bucket`.
#[track_caller]
fn key_of<'a>(uri: &'a str, bucket: &str) -> &'a str {
    uri.strip_prefix(&format!("s3://{bucket}/"))
        .unwrap_or_else(|| panic!("{uri} is not in s3://{bucket}"))
}

fn peak_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What the script of the 200 MB test prints: `yes` of a 99-byte line.
const LINE: &str = "the quick brown fox jumps over the lazy dog, again and again, for as long as the test wants, ok\n";

/// The agent's resident memory while it uploads a 200 MB log, at most.
const AGENT_PEAK_MIB: u64 = 64;

#[tokio::test(flavor = "multi_thread")]
async fn a_200_mb_log_reaches_s3_whole_while_the_agent_stays_small() {
    const BYTES: u64 = 200 * 1024 * 1024;
    let l = Logged::new("biglog").await;
    l.load(
        "big",
        &format!("yes '{}' | head -c {BYTES}", LINE.trim_end()),
        1,
        &[],
    );
    let mut agent = l.agent("big", &["--idle-timeout", "1s", "--log-upload-every", "3s"]);
    let mut peak = 0;
    let started = Instant::now();
    let status = loop {
        if let Some(kib) = peak_kib(agent.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the agent did not finish in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = std::io::read_to_string(agent.stderr.take().unwrap()).unwrap();
    assert!(status.success(), "agent: {status}\n{stderr}");
    let task = l.show("big", "S1");
    assert_eq!(task["state"], "done", "{task}");
    let uri = task["history"][0]["log_uri"].as_str().expect("a log URI");
    let object = l
        .object(key_of(uri, &l.bucket))
        .await
        .expect("the log in S3");
    assert_eq!(object.len() as u64, BYTES);
    let expected: Vec<u8> = LINE.bytes().cycle().take(BYTES as usize).collect();
    assert_eq!(
        hex(&Sha256::digest(&object)),
        hex(&Sha256::digest(&expected)),
        "the log in S3 is not what the script printed"
    );
    assert!(
        peak < AGENT_PEAK_MIB * 1024,
        "the agent peaked at {} MiB uploading a 200 MiB log (bound {AGENT_PEAK_MIB} MiB)",
        peak / 1024
    );
    eprintln!(
        "200 MiB log: agent peak resident {:.1} MiB, {:.1} s",
        peak as f64 / 1024.0,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_killed_mid_run_leaves_its_log_up_to_the_last_periodic_upload() {
    let l = Logged::new("killedlog").await;
    l.load(
        "slow",
        "for i in $(seq 1 600); do echo \"line $i\"; sleep 0.05; done",
        1,
        &["--lease", "6s"],
    );
    let mut agent = l.agent("slow", &["--log-upload-every", "1s"]);
    // Renewals (every 2 s) name where the running attempt's log goes.
    let started = Instant::now();
    let uri = loop {
        let task = l.show("slow", "S1");
        if let Some(uri) = task["log_uri"].as_str()
            && task["state"] == "running"
        {
            break uri.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no log URI on the running task: {task}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let key = key_of(&uri, &l.bucket).to_owned();
    assert!(key.ends_with("/1.log"), "{key}");
    // Wait for a few uploads, then kill the agent (its supervisor kills
    // the script).
    loop {
        let lines = l
            .object(&key)
            .await
            .map_or(0, |o| o.split(|b| *b == b'\n').count());
        if lines > 40 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the log was not uploaded while running"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.kill().unwrap();
    agent.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let object = l.object(&key).await.unwrap();
    let text = String::from_utf8(object.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() >= 40 && lines.len() < 600,
        "{} lines",
        lines.len()
    );
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(
            *line,
            format!("line {}", i + 1),
            "the upload is the log's start"
        );
    }
    // `taskctl logs` on the attempt (still running in the table: its
    // lease has not run out) prints what S3 has.
    assert_eq!(l.logs("slow", "S1"), object);
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_prints_a_running_attempt_to_its_end() {
    let l = Logged::new("followlog").await;
    l.load(
        "grow",
        "for i in $(seq 1 40); do echo \"line $i\"; sleep 0.1; done",
        1,
        &["--lease", "6s"],
    );
    let mut agent = l.agent(
        "grow",
        &["--idle-timeout", "1s", "--log-upload-every", "1s"],
    );
    // Follow from the moment the running attempt names its log.
    let started = Instant::now();
    while l.show("grow", "S1")["log_uri"].is_null() {
        assert!(started.elapsed() < Duration::from_secs(30), "no log URI");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let followed = l.table.taskctl(&[
        "logs",
        "grow",
        "S1",
        "--follow",
        "--s3-endpoint-url",
        &l.moto,
    ]);
    let followed = followed.ok().output.stdout.clone();
    assert!(agent.wait().unwrap().success());
    let task = l.show("grow", "S1");
    assert_eq!(
        task["state"], "done",
        "--follow returns once the attempt ends: {task}"
    );
    let expected: String = (1..=40).fold(String::new(), |mut all, i| {
        let _ = writeln!(all, "line {i}");
        all
    });
    assert_eq!(String::from_utf8(followed).unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn taskctl_logs_prints_the_same_text_from_the_embedded_store_and_from_s3() {
    let command = "echo \"sample $SAMPLE\"; printf 'tab\\there\\n'; echo to stderr >&2; exit 3";
    // DynamoDB and S3.
    let l = Logged::new("samelog").await;
    l.load(
        "qc",
        command,
        1,
        &["--max-attempts", "1", "--no-output-tail"],
    );
    let agent = l
        .agent("qc", &["--idle-timeout", "1s"])
        .wait_with_output()
        .unwrap();
    assert!(
        agent.status.success(),
        "{}",
        String::from_utf8_lossy(&agent.stderr)
    );
    let from_s3 = l.logs("qc", "S1");

    // The embedded store, a local agent, its log file.
    let dir = tempfile::tempdir().unwrap();
    let table = format!("sqlite://{}", dir.path().join("tasks.db").display());
    let sheet = dir.path().join("qc.csv");
    std::fs::write(&sheet, "sample\nS1\n").unwrap();
    taskctl_with(&["--table", &table, "init"], &[]).ok();
    taskctl_with(
        &[
            "--table",
            &table,
            "load",
            "--step",
            "qc",
            "--command",
            command,
            "--max-attempts",
            "1",
            sheet.to_str().unwrap(),
        ],
        &[],
    )
    .ok();
    let local = Command::new(fresh_agent())
        .env_clear()
        .envs(testkit::child_env())
        .args(["--table", &table, "--step", "qc", "--idle-timeout", "1s"])
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .output()
        .unwrap();
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let from_file = taskctl_with(&["--table", &table, "logs", "qc", "S1"], &[])
        .ok()
        .output
        .stdout
        .clone();

    assert_eq!(
        String::from_utf8_lossy(&from_s3),
        String::from_utf8_lossy(&from_file)
    );
    let text = String::from_utf8(from_s3).unwrap();
    assert!(text.contains("sample S1\ntab\there\n"), "{text}");
    assert!(text.contains("to stderr"), "{text}");

    // --no-output-tail: nothing of the output in the table; the failure
    // names exit code, class and the log.
    let task = l.show("qc", "S1");
    assert_eq!(task["state"], "failed");
    assert!(task["output_tail"].is_null(), "{task}");
    let failed = l
        .table
        .taskctl(&["status", "--failed", "--json"])
        .ok()
        .json();
    assert_eq!(failed[0]["exit_code"], 3, "{failed}");
    assert!(failed[0]["output_tail"].is_null(), "{failed}");
    assert!(
        failed[0]["log_uri"]
            .as_str()
            .is_some_and(|u| u.starts_with(&format!("s3://{}/", l.bucket))),
        "{failed}"
    );
    let human = l.table.taskctl(&["status", "--failed"]).ok().stdout();
    assert!(!human.contains("sample S1"), "{human}");
    assert!(human.contains("exit 3, class exit"), "{human}");
    // With the tail kept (the embedded store's step), it is there.
    let local_task = taskctl_with(&["--table", &table, "show", "qc", "S1", "--json"], &[])
        .ok()
        .json();
    assert!(
        local_task["output_tail"]
            .as_str()
            .is_some_and(|t| t.contains("sample S1")),
        "{local_task}"
    );
}

#[test]
fn logs_of_a_task_that_has_not_run_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let table = format!("sqlite://{}", dir.path().join("tasks.db").display());
    let sheet = dir.path().join("qc.csv");
    std::fs::write(&sheet, "sample\nS1\n").unwrap();
    taskctl_with(&["--table", &table, "init"], &[]).ok();
    taskctl_with(
        &[
            "--table",
            &table,
            "load",
            "--step",
            "qc",
            "--command",
            "true",
            sheet.to_str().unwrap(),
        ],
        &[],
    )
    .ok();
    let err = taskctl_with(&["--table", &table, "logs", "qc", "S1"], &[]).fails();
    assert!(
        err.contains("qc/S1 has not run yet (it is pending)"),
        "{err}"
    );
    let err = taskctl_with(&["--table", &table, "logs", "qc", "S9"], &[]).fails();
    assert!(err.contains("step 'qc' has no task 'S9'"), "{err}");
}
