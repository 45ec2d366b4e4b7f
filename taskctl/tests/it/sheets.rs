//! Sheets as people have them, through `taskctl load`: from standard
//! input and from S3, and what a task then shows of its columns.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{Run, Taskctl, TestTable, moto_endpoint, taskctl_with};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/sheets")
        .join(name)
}

/// `taskctl ARGS` with `input` on its standard input.
fn taskctl_stdin(args: &[&str], input: &[u8]) -> Run {
    crate::support::fresh_agent();
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskctl"))
        .env_clear()
        .envs(testkit::child_env())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    Run {
        output: child.wait_with_output().unwrap(),
    }
}

#[test]
fn a_dsub_file_on_standard_input_loads_and_show_prints_each_variable_beside_its_column() {
    let dir = tempfile::tempdir().unwrap();
    let table = format!("sqlite://{}", dir.path().join("tasks.db").display());
    taskctl_with(&["--table", &table, "init"], &[]).ok();
    let sheet = std::fs::read(data("dsub_tasks.tsv")).unwrap();
    let loaded = taskctl_stdin(
        &[
            "--table",
            &table,
            "load",
            "--step",
            "call",
            "--command",
            "true",
            "--format",
            "tsv",
            "--json",
            "-",
        ],
        &sheet,
    );
    let report = loaded.ok().json();
    assert_eq!(report["loaded"], 2);
    assert_eq!(
        report["sheet_sha256"],
        taskfleet::fleet::hex(&<sha2::Sha256 as sha2::Digest>::digest(&sheet))
    );
    let shown = taskctl_with(&["--table", &table, "show", "call", "HG00096"], &[]);
    let text = shown.ok().stdout();
    assert!(
        text.contains("VCF_FILE=gs://bucket/HG00096.vcf.gz    (column '--input VCF_FILE')"),
        "{text}"
    );
    assert!(
        text.contains("SAMPLE_ID=HG00096    (column '--env SAMPLE_ID')"),
        "{text}"
    );
    let json = taskctl_with(
        &["--table", &table, "show", "call", "HG00096", "--json"],
        &[],
    );
    assert_eq!(
        json.ok().json()["columns"]["OUTPUT_PATH"],
        "--output-recursive OUTPUT_PATH"
    );

    // A bad sheet on standard input is named as such.
    let err = taskctl_stdin(
        &[
            "--table",
            &table,
            "load",
            "--step",
            "call",
            "--command",
            "true",
            "-",
        ],
        b"sample,x\nA,1\nA,2\n",
    )
    .fails();
    assert!(err.contains("standard input:3: column 'sample'"), "{err}");
}

#[tokio::test]
async fn a_sheet_in_s3_loads_with_several_id_columns() {
    let moto = moto_endpoint();
    let t = TestTable::new("s3-sheet").await;
    let s3 = crate::support::moto_s3(&moto);
    let bucket = t.name.to_ascii_lowercase().replace('_', "-");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    s3.put_object()
        .bucket(&bucket)
        .key("sheets/nfcore.csv")
        .body(
            std::fs::read(data("nfcore_samplesheet.csv"))
                .unwrap()
                .into(),
        )
        .send()
        .await
        .unwrap();
    let url = format!("s3://{bucket}/sheets/nfcore.csv");
    let run = |args: &[&str]| {
        let mut all = vec![
            "--table",
            t.name.as_str(),
            "--endpoint-url",
            t.endpoint.as_str(),
        ];
        all.extend_from_slice(args);
        taskctl_with(&all, &[("AWS_ENDPOINT_URL_S3", moto.as_str())])
    };
    // The first column repeats: the message says what to type.
    let err = run(&["load", "--step", "align", "--command", "true", &url]).fails();
    assert!(
        err.contains("the task id 'P1' is already used on line 2")
            && err.contains("--id-column fastq_1"),
        "{err}"
    );
    let loaded = run(&[
        "load",
        "--step",
        "align",
        "--command",
        "true",
        "--id-column",
        "patient,sample,lane",
        "--json",
        &url,
    ]);
    assert_eq!(loaded.ok().json()["loaded"], 4);
    let shown = t.taskctl(&["show", "align", "P1/S1/L002", "--json"]);
    assert_eq!(shown.ok().json()["env"]["LANE"], "L002");
    let missing = run(&[
        "load",
        "--step",
        "align",
        "--command",
        "true",
        &format!("s3://{bucket}/sheets/nope.csv"),
    ])
    .fails();
    assert!(missing.contains("there is no sheet at s3://"), "{missing}");
}

#[test]
fn loading_into_the_default_embedded_store_creates_it_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.csv"), "sample\nA\nB\n").unwrap();
    let load = || {
        Command::new(env!("CARGO_BIN_EXE_taskctl"))
            .env_clear()
            .envs(testkit::child_env())
            .current_dir(dir.path())
            .args(["load", "--step", "qc", "--command", "true", "s.csv"])
            .output()
            .unwrap()
    };
    let first = load();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(
        stderr.contains("created the embedded task store sqlite://.taskfleet/tasks.db"),
        "{stderr}"
    );
    assert!(dir.path().join(".taskfleet/tasks.db").exists());
    // Once it exists, nothing more is said.
    let second = load();
    assert!(second.status.success());
    assert!(!String::from_utf8_lossy(&second.stderr).contains("created"));
}
