//! Writing many rows with one statement: each column travels as one array, and
//! `unnest` turns the arrays back into rows. [`Unnest`] names each column once, next to
//! the field it is read from, and writes the statement from that list.

use sqlx::encode::Encode;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Postgres, Type};

use super::Tx;

/// Rows of type `R`, bound column by column.
pub(crate) struct Unnest<'r, R> {
    rows: &'r [R],
    columns: Vec<Column>,
    arguments: PgArguments,
    error: Option<sqlx::error::BoxDynError>,
}

struct Column {
    name: &'static str,
    /// The value written, in terms of `v` (the unnested row) and, in an update, `t` (the
    /// table's row); `v.<name>` unless told otherwise.
    value: Option<&'static str>,
}

impl<'r, R> Unnest<'r, R> {
    pub fn of(rows: &'r [R]) -> Self {
        Self {
            rows,
            columns: Vec::new(),
            arguments: PgArguments::default(),
            error: None,
        }
    }

    /// A column whose value for each row is `field(row)`.
    pub fn column<T>(self, name: &'static str, field: impl Fn(&'r R) -> T) -> Self
    where
        T: 'r,
        Vec<T>: Encode<'r, Postgres> + Type<Postgres>,
    {
        self.bind(name, None, field)
    }

    /// A column written as the SQL expression `value` (over `v` and, in an update, `t`).
    pub fn column_as<T>(
        self,
        name: &'static str,
        value: &'static str,
        field: impl Fn(&'r R) -> T,
    ) -> Self
    where
        T: 'r,
        Vec<T>: Encode<'r, Postgres> + Type<Postgres>,
    {
        self.bind(name, Some(value), field)
    }

    fn bind<T>(
        mut self,
        name: &'static str,
        value: Option<&'static str>,
        field: impl Fn(&'r R) -> T,
    ) -> Self
    where
        T: 'r,
        Vec<T>: Encode<'r, Postgres> + Type<Postgres>,
    {
        let column: Vec<T> = self.rows.iter().map(field).collect();
        if let Err(error) = self.arguments.add(column) {
            self.error.get_or_insert(error);
        }
        self.columns.push(Column { name, value });
        self
    }

    /// `INSERT INTO table (columns) SELECT … FROM unnest(…) AS v(columns) <then>`; the
    /// table is aliased `t` for `then` (an `ON CONFLICT` clause, a `RETURNING` list).
    pub fn insert(self, table: &str, then: &str) -> Statement {
        let values = self
            .columns
            .iter()
            .map(|c| {
                c.value
                    .map_or_else(|| format!("v.{}", c.name), str::to_owned)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO {table} AS t ({}) SELECT {values} FROM {} {then}",
            self.names(),
            self.source()
        );
        self.into_statement(sql)
    }

    /// `UPDATE table t SET … FROM unnest(…) AS v(columns) WHERE t.key = v.key AND guard`:
    /// every column but `key` is set.
    pub fn update(self, table: &str, key: &str, guard: &str) -> Statement {
        let set = self
            .columns
            .iter()
            .filter(|c| c.name != key)
            .map(|c| match c.value {
                Some(value) => format!("{} = {value}", c.name),
                None => format!("{0} = v.{0}", c.name),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE {table} t SET {set} FROM {} WHERE t.{key} = v.{key} AND {guard}",
            self.source()
        );
        self.into_statement(sql)
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|c| c.name).collect();
        names.join(", ")
    }

    fn source(&self) -> String {
        let parameters: Vec<String> = (1..=self.columns.len()).map(|n| format!("${n}")).collect();
        format!("unnest({}) AS v({})", parameters.join(", "), self.names())
    }

    fn into_statement(self, sql: String) -> Statement {
        Statement {
            sql,
            arguments: self.arguments,
            error: self.error,
            empty: self.rows.is_empty(),
        }
    }
}

/// A statement over unnested columns, ready to run; with no rows it does nothing.
pub(crate) struct Statement {
    sql: String,
    arguments: PgArguments,
    error: Option<sqlx::error::BoxDynError>,
    empty: bool,
}

impl Statement {
    pub async fn execute(self, tx: &mut Tx<'_>) -> Result<(), sqlx::Error> {
        if self.empty {
            return Ok(());
        }
        if let Some(error) = self.error {
            return Err(sqlx::Error::Encode(error));
        }
        sqlx::query_with(&self.sql, self.arguments)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Runs a statement that returns one column (`RETURNING x`).
    pub async fn returning<T>(self, tx: &mut Tx<'_>) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'c> sqlx::Decode<'c, Postgres> + Type<Postgres> + Send + Unpin,
    {
        if self.empty {
            return Ok(Vec::new());
        }
        if let Some(error) = self.error {
            return Err(sqlx::Error::Encode(error));
        }
        sqlx::query_scalar_with(&self.sql, self.arguments)
            .fetch_all(&mut **tx)
            .await
    }

    #[cfg(test)]
    pub fn sql(&self) -> &str {
        &self.sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Row {
        id: i64,
        name: &'static str,
        note: Option<String>,
    }

    const ROWS: [Row; 2] = [
        Row {
            id: 1,
            name: "a",
            note: None,
        },
        Row {
            id: 2,
            name: "b",
            note: None,
        },
    ];

    #[test]
    fn an_insert_names_each_column_once_and_unnests_one_array_per_column() {
        let statement = Unnest::of(&ROWS)
            .column("id", |r| r.id)
            .column_as("name", "upper(v.name)", |r| r.name)
            .column("note", |r| r.note.clone())
            .insert("things", "ON CONFLICT (id) DO NOTHING");
        assert_eq!(
            statement.sql(),
            "INSERT INTO things AS t (id, name, note) SELECT v.id, upper(v.name), v.note \
             FROM unnest($1, $2, $3) AS v(id, name, note) ON CONFLICT (id) DO NOTHING"
        );
        assert!(statement.error.is_none());
    }

    #[test]
    fn an_update_sets_every_column_but_the_key_under_its_guard() {
        let statement = Unnest::of(&ROWS)
            .column("id", |r| r.id)
            .column_as("note", "coalesce(v.note, t.note)", |r| r.note.clone())
            .column("name", |r| r.name)
            .update("things", "id", "t.id > 0");
        assert_eq!(
            statement.sql(),
            "UPDATE things t SET note = coalesce(v.note, t.note), name = v.name \
             FROM unnest($1, $2, $3) AS v(id, note, name) WHERE t.id = v.id AND t.id > 0"
        );
    }
}
