//! Sample sheets: CSV or TSV with a header row, one task per row.
//!
//! [`Sheet::read`] validates the whole file before anything is written:
//! the caller gets either a sheet whose every row makes a valid task, or one
//! [`SheetError`] naming the file, the line and the column. Values are data:
//! they become environment variables of the task and never script text,
//! and no column may become a variable that changes how the script runs
//! ([`crate::envrules`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::envrules;
use crate::model::NewTask;
use crate::schema::MAX_TASK_ID_BYTES;

/// Field separator of a sheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated.
    Csv,
    /// Tab-separated.
    Tsv,
}

impl Format {
    /// `.tsv`/`.tab`/`.txt` and `.csv` decide by extension; otherwise the
    /// header line decides (more tabs than commas means TSV).
    pub fn detect(path: &Path, bytes: &[u8]) -> Self {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("tsv" | "tab") => Format::Tsv,
            Some("csv") => Format::Csv,
            _ => {
                let header = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
                let tabs = header.iter().filter(|&&b| b == b'\t').count();
                let commas = header.iter().filter(|&&b| b == b',').count();
                if tabs > commas {
                    Format::Tsv
                } else {
                    Format::Csv
                }
            }
        }
    }

    fn delimiter(self) -> u8 {
        match self {
            Format::Csv => b',',
            Format::Tsv => b'\t',
        }
    }
}

/// What is wrong with a sheet, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SheetError {
    /// The sheet.
    pub path: PathBuf,
    /// 1-based line, when the problem is on one.
    pub line: Option<u64>,
    /// The column concerned, when there is one.
    pub column: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for SheetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(col) = &self.column {
            write!(f, ": column '{col}'")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for SheetError {}

/// How to read a sheet.
#[derive(Debug, Clone, Default)]
pub struct SheetOptions {
    /// The column whose value is the task id; the first column if `None`.
    pub id_column: Option<String>,
    /// Separator; detected if `None`.
    pub format: Option<Format>,
}

/// A validated sheet.
#[derive(Debug, Clone)]
pub struct Sheet {
    /// The file it came from.
    pub path: PathBuf,
    /// The header as written.
    pub columns: Vec<String>,
    /// Environment variable name of each column, in column order.
    pub env_names: Vec<String>,
    /// The id column's name.
    pub id_column: String,
    /// One task per row, in file order.
    pub tasks: Vec<NewTask>,
}

/// An environment variable name for a column: upper case, anything outside
/// `[A-Z0-9_]` becomes `_`, and a leading digit gets a `_` in front.
pub fn env_name(column: &str) -> String {
    let mut out: String = column
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

impl Sheet {
    /// Reads and validates the sheet at `path`.
    pub fn read(path: &Path, options: &SheetOptions) -> Result<Self, SheetError> {
        let bytes = std::fs::read(path).map_err(|e| SheetError {
            path: path.to_owned(),
            line: None,
            column: None,
            message: match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".to_owned(),
                _ => format!("cannot read it: {e}"),
            },
        })?;
        Self::parse(path, &bytes, options)
    }

    /// Validates sheet content already in memory; `path` is for messages.
    pub fn parse(path: &Path, bytes: &[u8], options: &SheetOptions) -> Result<Self, SheetError> {
        let err = |line: Option<u64>, column: Option<&str>, message: String| SheetError {
            path: path.to_owned(),
            line,
            column: column.map(str::to_owned),
            message,
        };
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(err(
                None,
                None,
                "the sheet is empty: expected a header row and one row per task".into(),
            ));
        }
        let format = options
            .format
            .unwrap_or_else(|| Format::detect(path, bytes));
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(format.delimiter())
            .has_headers(false)
            .flexible(true)
            .from_reader(bytes);

        let mut records = reader.byte_records();
        let header = match records.next() {
            Some(Ok(h)) => h,
            Some(Err(e)) => {
                return Err(err(
                    e.position().map(csv::Position::line),
                    None,
                    format!("cannot parse the header: {e}"),
                ));
            }
            None => return Err(err(None, None, "the sheet is empty".into())),
        };
        let header_line = header.position().map_or(1, csv::Position::line);
        let (columns, env_names) = parse_header(&header, header_line, &err)?;

        let id_index = match &options.id_column {
            None => 0,
            Some(wanted) => columns.iter().position(|c| c == wanted).ok_or_else(|| {
                err(
                    Some(header_line),
                    None,
                    format!(
                        "there is no id column '{wanted}'; the columns are: {}",
                        columns.join(", ")
                    ),
                )
            })?,
        };
        let id_column = columns[id_index].clone();

        let mut lines = LineCounter::new(bytes);
        let mut tasks = Vec::new();
        let mut first_line_of: HashMap<String, u64> = HashMap::new();
        for record in records {
            let record = record.map_err(|e| {
                err(
                    e.position().map(csv::Position::line),
                    None,
                    format!("cannot parse the row: {e}"),
                )
            })?;
            let line = lines.line_at(record.position().map_or(0, csv::Position::byte));
            if record.len() == 1 && record.get(0).is_some_and(<[u8]>::is_empty) {
                continue; // a blank line
            }
            let (id, env) = row_values(&record, line, &columns, &env_names, id_index, &err)?;
            if let Some(first) = first_line_of.insert(id.clone(), line) {
                return Err(err(
                    Some(line),
                    Some(&id_column),
                    format!(
                        "the task id '{id}' is already used on line {first}; ids must be unique"
                    ),
                ));
            }
            tasks.push(NewTask {
                task_id: id,
                line,
                env,
            });
        }
        if tasks.is_empty() {
            return Err(err(
                None,
                None,
                "has a header but no rows; add one row per task".into(),
            ));
        }
        Ok(Sheet {
            path: path.to_owned(),
            columns,
            env_names,
            id_column,
            tasks,
        })
    }
}

/// Line numbers from byte offsets. The `csv` crate's own line count lags
/// behind on CRLF files, so lines are counted here, incrementally, from the
/// record's byte offset (skipping the line break it may point at).
struct LineCounter<'a> {
    bytes: &'a [u8],
    offset: usize,
    line: u64,
}

impl<'a> LineCounter<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            offset: 0,
            line: 1,
        }
    }

    fn line_at(&mut self, offset: u64) -> u64 {
        let mut target = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        while target < self.bytes.len() && matches!(self.bytes[target], b'\r' | b'\n') {
            target += 1;
        }
        if target >= self.offset {
            self.line += self.bytes[self.offset..target]
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64;
            self.offset = target;
        }
        self.line
    }
}

type ErrFn<'a> = dyn Fn(Option<u64>, Option<&str>, String) -> SheetError + 'a;

/// The header's column names and the environment variable of each.
fn parse_header(
    header: &csv::ByteRecord,
    header_line: u64,
    err: &ErrFn<'_>,
) -> Result<(Vec<String>, Vec<String>), SheetError> {
    let mut columns = Vec::with_capacity(header.len());
    for (i, field) in header.iter().enumerate() {
        let name = std::str::from_utf8(field).map_err(|_| {
            err(
                Some(header_line),
                None,
                format!(
                    "header field {} is not valid UTF-8; save the sheet as UTF-8",
                    i + 1
                ),
            )
        })?;
        let name = name.trim();
        if name.is_empty() {
            return Err(err(
                Some(header_line),
                None,
                format!("header field {} is empty; every column needs a name", i + 1),
            ));
        }
        columns.push(name.to_owned());
    }

    let mut env_names = Vec::with_capacity(columns.len());
    let mut by_env: HashMap<String, &str> = HashMap::new();
    for col in &columns {
        let name = env_name(col);
        if name.chars().all(|c| c == '_') {
            return Err(err(
                Some(header_line),
                Some(col),
                "has no letters or digits, so it cannot name an environment variable; rename it"
                    .into(),
            ));
        }
        if let Some(why) = envrules::refusal(&name) {
            return Err(err(
                Some(header_line),
                Some(col),
                format!("would become the environment variable {name}, {why}; rename the column"),
            ));
        }
        if let Some(other) = by_env.insert(name.clone(), col) {
            return Err(err(
                Some(header_line),
                Some(col),
                format!(
                    "and column '{other}' both become the environment variable {name}; rename one of them"
                ),
            ));
        }
        env_names.push(name);
    }

    Ok((columns, env_names))
}

/// A row's values as environment, and its validated task id.
fn row_values(
    record: &csv::ByteRecord,
    line: u64,
    columns: &[String],
    env_names: &[String],
    id_index: usize,
    err: &ErrFn<'_>,
) -> Result<(String, BTreeMap<String, String>), SheetError> {
    if record.len() != columns.len() {
        return Err(err(
            Some(line),
            None,
            format!(
                "has {} fields but the header has {}; every row needs one value per column",
                record.len(),
                columns.len()
            ),
        ));
    }
    let mut env = BTreeMap::new();
    for (i, field) in record.iter().enumerate() {
        let value = std::str::from_utf8(field).map_err(|e| {
            err(
                Some(line),
                Some(&columns[i]),
                format!(
                    "is not valid UTF-8 (bad byte at offset {}); save the sheet as UTF-8",
                    e.valid_up_to()
                ),
            )
        })?;
        env.insert(env_names[i].clone(), value.to_owned());
    }
    let id = env[&env_names[id_index]].trim().to_owned();
    if id.is_empty() {
        return Err(err(
            Some(line),
            Some(&columns[id_index]),
            "the task id is empty; every row needs an id".into(),
        ));
    }
    if id.len() > MAX_TASK_ID_BYTES {
        return Err(err(
            Some(line),
            Some(&columns[id_index]),
            format!(
                "the task id is {} bytes; at most {MAX_TASK_ID_BYTES} are allowed",
                id.len()
            ),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(err(
            Some(line),
            Some(&columns[id_index]),
            "the task id contains a control character (tab, newline, ...)".into(),
        ));
    }
    Ok((id, env))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.tasks.len(), 2);
        assert_eq!(s.tasks[0].task_id, "A");
        assert_eq!(s.tasks[0].env["NOTE"], "x, \"y\"");
        assert_eq!(s.tasks[1].line, 3);
        // Line numbers stay right on CRLF files with blank lines.
        assert_eq!(
            message(b"sample,x\r\nA,1\r\n\r\nB,2\r\nA,3\r\n"),
            "s.csv:5: column 'sample': the task id 'A' is already used on line 2; ids must be unique"
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
        assert_eq!(s.tasks[0].env["X"], "a,b");
    }

    #[test]
    fn rejects_bad_sheets_with_line_and_column() {
        assert!(message(b"").contains("empty"));
        assert!(message(b"sample,x\n").contains("no rows"));
        assert_eq!(
            message(b"sample,x\nA,1\nA,2\n"),
            "s.csv:3: column 'sample': the task id 'A' is already used on line 2; ids must be unique"
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
             which bash reads and which changes how it runs the script; rename the column"
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
                id_column: Some("nope".into()),
                format: None,
            },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "s.csv:1: there is no id column 'nope'; the columns are: a, b"
        );
    }
}
