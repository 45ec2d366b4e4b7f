//! Sheet parsing: formats, refusals and their messages.
use super::*;
use sha2::Digest;

fn parse(text: &[u8]) -> Result<Sheet, SheetError> {
    Sheet::parse(Path::new("s.csv"), text, &SheetOptions::default())
}

fn message(text: &[u8]) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn reads_quoted_fields_crlf_and_bom() {
    let s = parse(b"\xEF\xBB\xBFsample,note\r\nA,\"x, \"\"y\"\"\"\r\nB,plain\r\n").unwrap();
    assert_eq!(s.columns, ["sample", "note"]);
    assert_eq!(s.rows, 2);
    assert_eq!(s.tasks().unwrap()[0].task_id, "A");
    assert_eq!(s.tasks().unwrap()[0].env["NOTE"], "x, \"y\"");
    assert_eq!(s.tasks().unwrap()[1].line, 3);
    // Line numbers stay right on CRLF files with blank lines.
    assert_eq!(
        message(b"sample,x\r\nA,1\r\n\r\nB,2\r\nA,3\r\n"),
        "s.csv:5: column 'sample': the task id 'A' is already used on line 2; ids must be \
         unique; the column x is unique: --id-column x"
    );
}

#[test]
fn normalises_column_names_to_shell_identifiers() {
    assert_eq!(env_name("fastq_1"), "FASTQ_1");
    assert_eq!(env_name("Super Population"), "SUPER_POPULATION");
    assert_eq!(env_name("1kg-id"), "_1KG_ID");
}

#[test]
fn detects_tsv_by_extension_and_content() {
    assert_eq!(Format::detect(Path::new("a.tsv"), b"a,b"), Format::Tsv);
    assert_eq!(Format::detect(Path::new("a"), b"a\tb\tc\n"), Format::Tsv);
    assert_eq!(Format::detect(Path::new("a"), b"a,b\n"), Format::Csv);
    let s = Sheet::parse(
        Path::new("a.tsv"),
        b"id\tx\n1\ta,b\n",
        &SheetOptions::default(),
    )
    .unwrap();
    assert_eq!(s.tasks().unwrap()[0].env["X"], "a,b");
}

#[test]
fn rejects_bad_sheets_with_line_and_column() {
    assert!(message(b"").contains("empty"));
    assert!(message(b"sample,x\n").contains("no rows"));
    assert_eq!(
        message(b"sample,x\nA,1\nA,2\n"),
        "s.csv:3: column 'sample': the task id 'A' is already used on line 2; ids must be \
         unique; the column x is unique: --id-column x"
    );
    assert_eq!(
        message(b"sample,x\n,1\n"),
        "s.csv:2: column 'sample': the task id is empty; every row needs an id"
    );
    assert_eq!(
        message(b"sample,x\nA,1,2\n"),
        "s.csv:2: has 3 fields but the header has 2; every row needs one value per column"
    );
    assert!(message(b"a_b,a-b\n1,2\n").contains("both become the environment variable A_B"));
    assert!(message(b"sample,path\n1,2\n").contains("PATH"));
    assert_eq!(
        message(b"sample,shellopts\nA,noexec\n"),
        "s.csv:1: column 'shellopts': would become the environment variable SHELLOPTS, \
         which bash reads and which changes how it runs the script; load it under another \
         name with --rename shellopts=SHEET_SHELLOPTS"
    );
    assert!(message(b"sample,ps4\nA,$(id)\n").contains("variable PS4, which bash reads"));
    assert!(message(b"sample,bash func x\nA,y\n").contains("BASH_FUNC_X"));
    assert!(message(b"sample,aws_profile\nA,y\n").contains("AWS_PROFILE"));
    assert_eq!(
        message(b"sample,x\nA,\xff\n"),
        "s.csv:2: column 'x': is not valid UTF-8 (bad byte at offset 0); save the sheet as UTF-8"
    );
    let e = Sheet::parse(
        Path::new("s.csv"),
        b"a,b\n1,2\n",
        &SheetOptions {
            id_columns: vec!["nope".into()],
            ..SheetOptions::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "s.csv:1: there is no id column 'nope'; the columns are: a, b"
    );
}

/// A sheet of the test data, by file name.
fn data(name: &str, options: &SheetOptions) -> Result<Sheet, SheetError> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/sheets")
        .join(name);
    Sheet::read(&path, options)
}

fn ids(sheet: &Sheet) -> Vec<String> {
    sheet
        .tasks()
        .unwrap()
        .into_iter()
        .map(|t| t.task_id)
        .collect()
}

fn error(name: &str, options: &SheetOptions) -> String {
    let e = data(name, options).unwrap_err();
    // Messages name the file by its path; compare from the file name on.
    let text = e.to_string();
    text[text.find(name).unwrap()..].to_owned()
}

#[test]
fn the_1000_genomes_panel_loads_its_trailing_empty_header_fields_ignored() {
    let s = data("1000g_panel.tsv", &SheetOptions::default()).unwrap();
    assert_eq!(s.columns, ["sample", "pop", "super_pop", "gender"]);
    assert_eq!(ids(&s), ["HG00096", "HG00097", "NA12878"]);
    assert_eq!(s.tasks().unwrap()[2].env["SUPER_POP"], "EUR");
    assert_eq!(s.tasks().unwrap()[2].env.len(), 4);
    // A value under an unnamed field, or an empty name in the middle, is
    // still refused.
    let tsv = |text: &[u8]| {
        Sheet::parse(Path::new("s.tsv"), text, &SheetOptions::default())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        tsv(b"sample\tpop\t\t\nA\tGBR\t\tx\n"),
        "s.tsv:2: has a value under header field 4, which has no name; name that column"
    );
    assert_eq!(
        message(b"sample,,pop\nA,1,2\n"),
        "s.csv:1: header field 2 is empty; every column needs a name"
    );
}

#[test]
fn dsub_columns_become_the_names_after_their_kind_and_keep_the_kind() {
    let s = data("dsub_tasks.tsv", &SheetOptions::default()).unwrap();
    assert_eq!(s.columns, ["SAMPLE_ID", "VCF_FILE", "OUTPUT_PATH", "batch"]);
    assert_eq!(ids(&s), ["HG00096", "HG00097"]);
    let env = &s.tasks().unwrap()[0].env;
    assert_eq!(env["SAMPLE_ID"], "HG00096");
    assert_eq!(env["VCF_FILE"], "gs://bucket/HG00096.vcf.gz");
    assert_eq!(env["OUTPUT_PATH"], "gs://bucket/out/HG00096/");
    assert_eq!(env["batch"], "b1");
    let kinds: Vec<_> = s.column_info.iter().map(|c| c.kind.as_deref()).collect();
    assert_eq!(
        kinds,
        [
            Some("env"),
            Some("input"),
            Some("output-recursive"),
            Some("label")
        ]
    );
    assert_eq!(s.origins()["VCF_FILE"], "--input VCF_FILE");
    assert!(
        message(b"--mount DATA\nx\n").contains("--mount is not one of dsub's kinds"),
        "{}",
        message(b"--mount DATA\nx\n")
    );
    assert!(message(b"--input\nx\n").contains("needs a variable name after the kind"));
}

#[test]
fn an_illumina_v1_sheet_loads_its_data_section() {
    let s = data("illumina_v1.csv", &SheetOptions::default()).unwrap();
    assert_eq!(
        s.columns,
        [
            "Sample_ID",
            "Sample_Name",
            "I7_Index_ID",
            "index",
            "Sample_Project"
        ]
    );
    assert_eq!(ids(&s), ["S1", "S2", "S3"]);
    assert_eq!(s.tasks().unwrap()[1].env["INDEX"], "TCCGGAGA");
    assert_eq!(s.tasks().unwrap()[1].env["SAMPLE_NAME"], "NA12891");
    // Lines count from the top of the file, sections included.
    assert_eq!(s.tasks().unwrap()[0].line, 16);
}

#[test]
fn an_illumina_v2_sheet_with_two_tables_asks_which_and_loads_the_one_chosen() {
    assert_eq!(
        error("illumina_v2.csv", &SheetOptions::default()),
        "illumina_v2.csv: is a sheet with sections, and [BCLConvert_Data], [Cloud_Data] hold tables; \
         choose one with --section, e.g. --section BCLConvert_Data"
    );
    let cloud = SheetOptions {
        section: Some("Cloud_Data".into()),
        ..SheetOptions::default()
    };
    let s = data("illumina_v2.csv", &cloud).unwrap();
    assert_eq!(s.columns, ["Sample_ID", "ProjectName", "LibraryName"]);
    assert_eq!(ids(&s), ["S1", "S2"]);
    assert_eq!(s.tasks().unwrap()[0].env["LIBRARYNAME"], "S1_lib");
    let bcl = SheetOptions {
        section: Some("BCLConvert_Data".into()),
        id_columns: vec!["Sample_ID".into()],
        ..SheetOptions::default()
    };
    assert_eq!(ids(&data("illumina_v2.csv", &bcl).unwrap()), ["S1", "S2"]);
    let missing = SheetOptions {
        section: Some("Data".into()),
        ..SheetOptions::default()
    };
    assert!(
        error("illumina_v2.csv", &missing)
            .contains("has no section [Data]; its sections are [Header], [Reads]"),
        "{}",
        error("illumina_v2.csv", &missing)
    );
}

#[test]
fn ids_from_several_columns_and_a_collision_names_the_columns_that_are_unique() {
    // The first column repeats: the message names a unique column and the
    // option to type.
    assert_eq!(
        error("nfcore_samplesheet.csv", &SheetOptions::default()),
        "nfcore_samplesheet.csv:3: column 'patient': the task id 'P1' is already used on line 2; \
         ids must be unique; the column fastq_1 is unique: --id-column fastq_1"
    );
    let three = SheetOptions {
        id_columns: vec!["patient".into(), "sample".into(), "lane".into()],
        ..SheetOptions::default()
    };
    let s = data("nfcore_samplesheet.csv", &three).unwrap();
    assert_eq!(
        ids(&s),
        ["P1/S1/L001", "P1/S1/L002", "P1/S2/L001", "P2/S3/L001"]
    );
    assert_eq!(s.id_column, "patient,sample,lane");
    // Without a unique single column, the smallest set is named.
    assert_eq!(
        message(b"patient,sample,lane\nP1,S1,L1\nP1,S1,L2\nP1,S2,L1\n"),
        "s.csv:3: column 'patient': the task id 'P1' is already used on line 2; ids must be unique; \
         the columns sample, lane together are unique: --id-column sample,lane"
    );
    // Joined values cannot be confused with each other.
    let two = SheetOptions {
        id_columns: vec!["a".into(), "b".into()],
        ..SheetOptions::default()
    };
    let s = Sheet::parse(Path::new("s.csv"), b"a,b\nx/y,z\nx,y/z\n50%,1\n", &two).unwrap();
    assert_eq!(ids(&s), ["x%2Fy/z", "x/y%2Fz", "50%25/1"]);
}

#[test]
fn row_ids_number_a_sheet_without_an_id_column() {
    let rows = SheetOptions {
        row_ids: true,
        ..SheetOptions::default()
    };
    let s = data("no_id.csv", &rows).unwrap();
    assert_eq!(ids(&s), ["1", "2", "3"]);
    assert_eq!(s.tasks().unwrap()[2].env["FASTQ"], "C_R1.fq.gz");
    assert_eq!(s.id_column, "(row number)");
}

#[test]
fn sra_column_names_keep_working_and_a_reserved_one_gets_the_option_to_type() {
    assert_eq!(
        error("sra_runs.csv", &SheetOptions::default()),
        "sra_runs.csv:1: column 'path': would become the environment variable PATH, which scripts \
         get from the agent's own environment; load it under another name with --rename \
         path=SHEET_PATH"
    );
    let renamed = SheetOptions {
        renames: vec![("path".into(), "BAM_PATH".into())],
        ..SheetOptions::default()
    };
    let s = data("sra_runs.csv", &renamed).unwrap();
    assert_eq!(
        s.env_names,
        [
            "RUN",
            "SAMPLE_NAME",
            "LIBRARY__TYPE_",
            "ASSAY_TYPE",
            "BAM_PATH"
        ]
    );
    assert_eq!(
        s.tasks().unwrap()[0].env["LIBRARY__TYPE_"],
        "WGS (PCR-free)"
    );
    assert_eq!(s.tasks().unwrap()[0].env["BAM_PATH"], "/data/SRR001.bam");
    assert_eq!(s.origins()["SAMPLE_NAME"], "Sample Name");
    assert_eq!(s.origins()["BAM_PATH"], "path");
    let unknown = SheetOptions {
        renames: vec![("bam".into(), "X".into())],
        ..SheetOptions::default()
    };
    assert!(error("sra_runs.csv", &unknown).contains("--rename bam=X: there is no column 'bam'"));
    // A column name that needs quoting gets a quoted option.
    assert!(
        message(b"sample,Bash Env\nA,x\n").contains("--rename 'Bash Env=SHEET_BASH_ENV'"),
        "{}",
        message(b"sample,Bash Env\nA,x\n")
    );
}

#[test]
fn the_sheet_digest_is_of_its_bytes() {
    let s = parse(b"sample\nA\n").unwrap();
    assert_eq!(
        s.sha256,
        crate::fleet::hex(&sha2::Sha256::digest(b"sample\nA\n"))
    );
}
