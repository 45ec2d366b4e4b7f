//! One pass over a sheet's table: the header record, then the rows as
//! tasks, one at a time.

use std::io::Read;
use std::sync::{Arc, Mutex};

use super::input::{Tracked, Window, lock};
use super::{EMPTY, Sheet, SheetError, check_id, ids, is_blank, row_values};
use crate::model::NewTask;

/// A pass over the rows of a sheet.
pub struct RowReader<'a> {
    sheet: &'a Sheet,
    csv: Option<csv::Reader<std::io::Take<Tracked>>>,
    window: Arc<Mutex<Window>>,
    record: csv::ByteRecord,
    rows: usize,
}

impl<'a> RowReader<'a> {
    /// Opens the sheet again and stands at the start of its table.
    pub fn start(sheet: &'a Sheet) -> Result<Self, SheetError> {
        let io = |e: std::io::Error| sheet.error(None, None, format!("cannot read it: {e}"));
        let mut tracked = Tracked::new(sheet.input.open().map_err(io)?);
        tracked.skip(sheet.table.0).map_err(io)?;
        let window = tracked.window();
        let csv = csv::ReaderBuilder::new()
            .delimiter(sheet.format.delimiter())
            .has_headers(false)
            .flexible(true)
            .from_reader(tracked.take(sheet.table.1.saturating_sub(sheet.table.0)));
        Ok(Self {
            sheet,
            csv: Some(csv),
            window,
            record: csv::ByteRecord::new(),
            rows: 0,
        })
    }

    /// The next record that is not blank, and its line; `None` at the end.
    fn next_record(&mut self, what: &str) -> Result<Option<u64>, SheetError> {
        let Some(csv) = self.csv.as_mut() else {
            return Ok(None);
        };
        loop {
            let more = csv.read_byte_record(&mut self.record).map_err(|e| {
                self.sheet.error(
                    e.position().map(csv::Position::line),
                    None,
                    format!("cannot parse the {what}: {e}"),
                )
            })?;
            if !more {
                return Ok(None);
            }
            let offset = self.sheet.table.0 + self.record.position().map_or(0, csv::Position::byte);
            // Blank records move the line count on too, so that a run of
            // them does not keep its bytes.
            let line = lock(&self.window).line_at(offset);
            if is_blank(&self.record) {
                continue;
            }
            return Ok(Some(line));
        }
    }

    /// The header record (the first that is not blank) and its line.
    pub fn header(&mut self) -> Result<(csv::ByteRecord, u64), SheetError> {
        match self.next_record("header")? {
            Some(line) => Ok((self.record.clone(), line)),
            None => Err(self.sheet.error(None, None, EMPTY.into())),
        }
    }

    /// The next row as a task; `None` after the last.
    pub fn next_task(&mut self) -> Result<Option<NewTask>, SheetError> {
        let Some(line) = self.next_record("row")? else {
            return Ok(None);
        };
        let sheet = self.sheet;
        let err = |line: Option<u64>, column: Option<&str>, message: String| {
            sheet.error(line, column, message)
        };
        let values = row_values(&self.record, line, &sheet.column_info, sheet.width, &err)?;
        self.rows += 1;
        let id = match &sheet.source {
            ids::IdSource::RowNumber => self.rows.to_string(),
            ids::IdSource::Columns(list) => ids::join(list, &values),
        };
        check_id(&id, line, &sheet.id_column, &err)?;
        let env = sheet
            .env_names
            .iter()
            .zip(&values)
            .map(|(k, v)| (k.clone(), (*v).to_owned()))
            .collect();
        Ok(Some(NewTask {
            task_id: id,
            line,
            env,
        }))
    }

    /// Reads to the end of the file; the SHA-256 of all of it, hex.
    pub fn finish(mut self) -> Result<String, SheetError> {
        let csv = self.csv.take().expect("finish is called once");
        csv.into_inner()
            .into_inner()
            .finish()
            .map_err(|e| self.sheet.error(None, None, format!("cannot read it: {e}")))
    }
}
