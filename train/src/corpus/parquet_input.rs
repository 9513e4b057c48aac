//! Parquet input: one document per row, the text in a string column (`--text-column`).
//! Only that column is read; rows are streamed a record batch at a time.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{Array, LargeStringArray, RecordBatch, StringArray, StringViewArray};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use super::{Document, InputError};

pub struct ParquetReader {
    reader: ParquetRecordBatchReader,
    file: Arc<PathBuf>,
    batch: Option<RecordBatch>,
    index: usize,
    row: u64,
    done: bool,
}

impl ParquetReader {
    pub fn open(file: Arc<PathBuf>, column: &str) -> Result<Self, InputError> {
        let err = |m: String| InputError::new(file.as_path(), "", m);
        let f = File::open(file.as_path()).map_err(|e| err(format!("cannot open: {e}")))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(f)
            .map_err(|e| err(format!("not a readable parquet file: {e}")))?;
        let schema = builder.parquet_schema();
        let Some(index) = (0..schema.num_columns()).find(|&i| schema.column(i).name() == column)
        else {
            let names: Vec<_> = (0..schema.num_columns())
                .map(|i| schema.column(i).name().to_string())
                .collect();
            return Err(err(format!(
                "no column '{column}' (--text-column); columns: {}",
                names.join(", ")
            )));
        };
        let mask = ProjectionMask::leaves(schema, [index]);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(1024)
            .build()
            .map_err(|e| err(format!("cannot read column '{column}': {e}")))?;
        Ok(ParquetReader {
            reader,
            file,
            batch: None,
            index: 0,
            row: 0,
            done: false,
        })
    }

    fn text_at(&self, batch: &RecordBatch, i: usize) -> Result<Option<String>, String> {
        let col = batch.column(0);
        if col.is_null(i) {
            return Ok(None);
        }
        if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
            return Ok(Some(a.value(i).to_string()));
        }
        if let Some(a) = col.as_any().downcast_ref::<LargeStringArray>() {
            return Ok(Some(a.value(i).to_string()));
        }
        if let Some(a) = col.as_any().downcast_ref::<StringViewArray>() {
            return Ok(Some(a.value(i).to_string()));
        }
        Err(format!(
            "column '{}' has type {}, expected a string column",
            batch.schema().field(0).name(),
            col.data_type()
        ))
    }
}

impl Iterator for ParquetReader {
    type Item = Result<Document, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if let Some(batch) = self.batch.take() {
                if self.index < batch.num_rows() {
                    let i = self.index;
                    self.index += 1;
                    self.row += 1;
                    let result = self.text_at(&batch, i);
                    self.batch = Some(batch);
                    match result {
                        Ok(Some(text)) => {
                            return Some(Ok(Document {
                                text,
                                file: self.file.clone(),
                                location: format!("row {}", self.row),
                                wikitext: false,
                            }))
                        }
                        Ok(None) => continue,
                        Err(m) => {
                            self.done = true;
                            return Some(Err(InputError::new(self.file.as_path(), "", m)));
                        }
                    }
                }
            }
            match self.reader.next() {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Ok(batch)) => {
                    self.batch = Some(batch);
                    self.index = 0;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(InputError::new(
                        self.file.as_path(),
                        format!("after row {}", self.row),
                        format!("corrupt parquet data: {e}"),
                    )));
                }
            }
        }
    }
}
