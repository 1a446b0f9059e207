//! Values as the WIT's `sql.value` variant: parameters go to PostgreSQL in
//! text form, so the server converts them to whatever type the statement
//! declares (an integer into `numeric`, text into `uuid` or `jsonb`), and
//! result columns come back by their type.

use bytes::BytesMut;
use tokio_postgres::Column;
use tokio_postgres::Row;
use tokio_postgres::types::{Format, IsNull, ToSql, Type, to_sql_checked};

use crate::SqlError;

/// One SQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `NULL`.
    Null,
    /// `boolean`.
    Boolean(bool),
    /// Any integer type.
    Integer(i64),
    /// `real` or `double precision`.
    Double(f64),
    /// Any text type (and, as a parameter, any type's text form).
    Text(String),
    /// `bytea`.
    Bytes(Vec<u8>),
}

/// A query's answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rows {
    /// The column names, in order.
    pub columns: Vec<String>,
    /// The rows, each as long as `columns`.
    pub rows: Vec<Vec<Value>>,
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for Value {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let text = match self {
            Value::Null => return Ok(IsNull::Yes),
            Value::Boolean(b) => b.to_string(),
            Value::Integer(n) => n.to_string(),
            Value::Double(x) if x.is_nan() => "NaN".to_string(),
            Value::Double(x) if x.is_infinite() => {
                if *x > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
            }
            Value::Double(x) => x.to_string(),
            Value::Text(t) => {
                if t.contains('\0') {
                    return Err("text parameters may not contain NUL".into());
                }
                t.clone()
            }
            Value::Bytes(b) => format!("\\x{}", hex::encode(b)),
        };
        out.extend_from_slice(text.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        // Text form: the server parses it as the declared type, and says
        // so when it cannot.
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// Column `i` of `row`, by its type.
fn cell(row: &Row, i: usize, column: &Column) -> Result<Value, SqlError> {
    let read = |e: tokio_postgres::Error| SqlError {
        message: format!("column {}: {e}", column.name()),
        sqlstate: None,
    };
    let ty = column.type_();
    let value = match *ty {
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .map_err(read)?
            .map(Value::Boolean),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map_err(read)?
            .map(|n| Value::Integer(n.into())),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)
            .map_err(read)?
            .map(|n| Value::Integer(n.into())),
        Type::INT8 => row
            .try_get::<_, Option<i64>>(i)
            .map_err(read)?
            .map(Value::Integer),
        Type::OID => row
            .try_get::<_, Option<u32>>(i)
            .map_err(read)?
            .map(|n| Value::Integer(n.into())),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)
            .map_err(read)?
            .map(|x| Value::Double(x.into())),
        Type::FLOAT8 => row
            .try_get::<_, Option<f64>>(i)
            .map_err(read)?
            .map(Value::Double),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => row
            .try_get::<_, Option<String>>(i)
            .map_err(read)?
            .map(Value::Text),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)
            .map_err(read)?
            .map(Value::Bytes),
        _ => {
            return Err(SqlError {
                message: format!(
                    "column {} has type {ty}, which the sql interface does not carry: cast it in the query (e.g. {}::text)",
                    column.name(),
                    column.name()
                ),
                sqlstate: None,
            });
        }
    };
    Ok(value.unwrap_or(Value::Null))
}

/// The size of `value` counted against the result limit.
fn size(value: &Value) -> usize {
    match value {
        Value::Text(t) => t.len(),
        Value::Bytes(b) => b.len(),
        _ => 8,
    }
}

/// `rows` of `columns` as [`Rows`], refused when over `limit` bytes.
pub(crate) fn rows(columns: &[Column], rows: &[Row], limit: usize) -> Result<Rows, SqlError> {
    let mut out = Rows {
        columns: columns.iter().map(|c| c.name().to_string()).collect(),
        rows: Vec::with_capacity(rows.len()),
    };
    let mut total = 0usize;
    for row in rows {
        let mut values = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            let value = cell(row, i, column)?;
            total += size(&value);
            if total > limit {
                return Err(SqlError {
                    message: format!(
                        "the query's rows exceed {limit} bytes: select fewer, or page with LIMIT"
                    ),
                    sqlstate: None,
                });
            }
            values.push(value);
        }
        out.rows.push(values);
    }
    Ok(out)
}
