//! The database: one pool over SQLite or PostgreSQL, migrations, and the named
//! queries of every table, and the facts a fetch reads that never change,
//! cached in memory. No SQL lives outside this module.

pub(crate) mod applications;
pub mod archives;
pub mod audit;
pub(crate) mod facts;
pub mod grants;
pub(crate) mod keys;
pub mod models;
pub(crate) mod outbox;
pub(crate) mod policy;
pub(crate) mod postgres_writer;
pub mod reports;
pub(crate) mod researchers;
pub mod reviewers;
pub mod sessions;
pub(crate) mod sqlite_writer;
pub(crate) mod tokens;
pub(crate) mod webhooks;

use std::path::PathBuf;

use anyhow::Context;
use sqlx::{
    Any, AnyConnection, AnyPool, Connection, Executor,
    any::AnyPoolOptions,
    migrate::{Migrate, Migrator},
};

pub(crate) type Tx = sqlx::Transaction<'static, Any>;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A cheap-to-clone handle on the database.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    url: String,
    backend: Backend,
    /// The SQLite database file, for the parts that read or write it through
    /// their own connection; `None` on PostgreSQL and for in-memory databases.
    sqlite_file: Option<PathBuf>,
}

/// Leaves out the URL, which may hold a password.
impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend)
            .field("sqlite_file", &self.sqlite_file)
            .finish_non_exhaustive()
    }
}

impl Db {
    pub(crate) async fn connect(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            anyhow::bail!("unsupported database URL: expected sqlite://PATH or postgres://...");
        };
        // An SQLite connection is a file handle in this process: it cannot
        // drop the way a server connection does, so it is not pinged before
        // every use.
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            .test_before_acquire(backend == Backend::Postgres)
            // A request waits this long for a connection when the database is
            // unreachable, then fails with a clear 503 instead of hanging.
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .context("cannot connect to the database")?;
        if backend == Backend::Sqlite {
            // WAL lets readers proceed while one writer commits; the setting is
            // stored in the database file, so setting it once per start is enough.
            pool.execute("PRAGMA journal_mode = WAL").await?;
        }
        let sqlite_file = match backend {
            Backend::Sqlite => {
                let file: String =
                    sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                        .fetch_one(&pool)
                        .await?;
                Some(PathBuf::from(file)).filter(|f| !f.as_os_str().is_empty())
            }
            Backend::Postgres => None,
        };
        Ok(Self {
            pool,
            url: url.to_owned(),
            backend,
            sqlite_file,
        })
    }

    /// A connection of its own, outside the pool, for a task that writes all
    /// the time (the audit writer).
    pub(crate) async fn connect_one(&self) -> anyhow::Result<AnyConnection> {
        if self.backend == Backend::Sqlite && self.sqlite_file.is_none() {
            // A new connection to an in-memory database would open another,
            // empty one: take one of the pool's instead.
            return Ok(self.pool.acquire().await?.detach());
        }
        AnyConnection::connect(&self.url)
            .await
            .context("cannot connect to the database")
    }

    /// The SQLite database file, when the database is one.
    pub(crate) fn sqlite_file(&self) -> Option<&std::path::Path> {
        self.sqlite_file.as_deref()
    }

    /// Asks the database for nothing, to learn that it answers.
    pub(crate) async fn ping(&self) -> sqlx::Result<()> {
        sqlx::query_scalar::<_, i64>("SELECT 1")
            .fetch_one(&self.pool)
            .await
            .map(|_| ())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn migrator(&self) -> &'static Migrator {
        match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// Applies every migration this build knows and refuses a database whose
    /// schema is newer than this build.
    pub(crate) async fn migrate(&self) -> anyhow::Result<()> {
        self.schema_state().await?;
        self.migrator()
            .run(&self.pool)
            .await
            .context("cannot apply database migrations")?;
        Ok(())
    }

    /// Refuses to go on unless the schema is exactly what this build knows.
    pub(crate) async fn check_schema(&self) -> anyhow::Result<()> {
        let pending = self.schema_state().await?;
        anyhow::ensure!(
            pending == 0,
            "the database schema is not up to date ({pending} migration(s) pending): run `weightgate migrate` first"
        );
        Ok(())
    }

    /// The number of known migrations not yet applied; an error when the
    /// database has migrations this build does not know.
    async fn schema_state(&self) -> anyhow::Result<usize> {
        let migrator = self.migrator();
        let mut conn = self.pool.acquire().await?;
        conn.ensure_migrations_table(&migrator.table_name).await?;
        let applied = conn.list_applied_migrations(&migrator.table_name).await?;
        let known: Vec<i64> = migrator.iter().map(|m| m.version).collect();
        if let Some(unknown) = applied.iter().find(|m| !known.contains(&m.version)) {
            anyhow::bail!(
                "the database has schema version {}, which this weightgate build does not know; upgrade weightgate",
                unknown.version
            );
        }
        Ok(known
            .iter()
            .filter(|v| !applied.iter().any(|m| m.version == **v))
            .count())
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock
    /// up front, so a transaction that reads before it writes never fails half-way
    /// when another writer got there first.
    pub async fn begin(&self) -> anyhow::Result<Tx> {
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(tx)
    }
}

/// `count` placeholders, separated by commas, numbered from `$first` on; on
/// SQLite anonymous `?` ones in the same order. SQLite finds a numbered
/// parameter by a linear search of the statement's parameters, so a
/// statement with hundreds of them costs time quadratic in their number to
/// prepare and to bind.
/// Whether `conn` speaks to PostgreSQL.
pub(crate) fn is_postgres(conn: &AnyConnection) -> bool {
    conn.backend_name() == "PostgreSQL"
}

pub(crate) fn placeholders(conn: &AnyConnection, first: usize, count: usize) -> String {
    let sqlite = conn.backend_name() == "SQLite";
    let mut list = String::with_capacity(count * 5);
    for n in first..first + count {
        if n > first {
            list.push_str(", ");
        }
        if sqlite {
            list.push('?');
        } else {
            list.push_str(&format!("${n}"));
        }
    }
    list
}

/// `true` when the error is a unique-constraint violation.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Migrations that must be written in each dialect, and why: SQLite
    /// cannot add a CHECK to a table that exists, and uses triggers where
    /// PostgreSQL adds constraints (`types::states` checks both list the
    /// same values); the access URLs' migration reads the clock, which the
    /// two spell differently; the audit append function is PostgreSQL's
    /// alone; the report tables are WITHOUT ROWID on SQLite, which
    /// PostgreSQL has no words for; the leaner log's migration converts
    /// hexadecimal and UUIDs with each one's functions, and PostgreSQL's
    /// stores events through a function of its own.
    const IN_EACH_DIALECT: &[i64] = &[
        20261130140000,
        20261130150000,
        20261201140000,
        20261202090000,
        20261204090000,
    ];

    /// The leaner log's migration keeps what every event said: the view
    /// reads the old rows back column for column, and a hash that was not
    /// lower-case hexadecimal (so already did not match) does not become one.
    #[tokio::test]
    async fn the_lean_log_migration_keeps_what_each_event_said() {
        use sqlx::Connection as _;
        const LEAN: i64 = 20261204090000;
        sqlx::any::install_default_drivers();
        let mut conn = AnyConnection::connect("sqlite::memory:").await.unwrap();
        let run = async |conn: &mut AnyConnection, before: bool| {
            for m in SQLITE_MIGRATIONS.iter().filter(|m| (m.version < LEAN) == before) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(m.sql.as_str().to_owned()))
                    .execute(&mut *conn)
                    .await
                    .unwrap();
            }
        };
        run(&mut conn, true).await;
        let uuid = "0b9e2c1a-4f3d-4e5a-9b8c-7d6e5f4a3b2c";
        let old = [
            (
                1,
                "file.fetch",
                Some("Zo\u{eb} \"x\""),
                Some(uuid),
                "0".repeat(64),
                "ab".repeat(32),
                None,
            ),
            (
                2,
                "file.fetch",
                None,
                Some("Trace-42"),
                "ab".repeat(32),
                "cd".repeat(32),
                Some(3),
            ),
            (
                3,
                "reviewer.sign_in",
                Some("r@lab.example.org"),
                None,
                "cd".repeat(32),
                "F".repeat(64),
                None,
            ),
            // SQLite's text functions stop at a NUL: what follows one must
            // not be dropped on the way.
            (
                4,
                "file.fetch",
                None,
                Some("0b9e2c1a-4f3d-4e5a-9b8c-7d6e5f4a3b2c\0"),
                "F".repeat(64),
                "ef".repeat(32) + "\0x",
                None,
            ),
        ];
        for (seq, action, subject, request_id, prev, hash, occurrences) in &old {
            sqlx::query(
                "INSERT INTO audit_events (seq, at, action, outcome, subject, grant_id, client_ip, user_agent,
                    request_id, prev_hash, hash, occurrences)
                 VALUES ($1, 1700000000000, $2, 'ok', $3, 'g1', '192.0.2.7', 'curl/8.5.0', $4, $5, $6, $7)",
            )
            .bind(seq)
            .bind(action)
            .bind(subject)
            .bind(request_id)
            .bind(prev)
            .bind(hash)
            .bind(occurrences)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        run(&mut conn, false).await;
        let back: Vec<audit::EventRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM audit_log ORDER BY seq",
            audit::COLUMNS
        )))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(back.len(), 4);
        for (r, (seq, action, subject, request_id, prev, hash, occurrences)) in back.iter().zip(&old) {
            assert_eq!(r.seq, *seq);
            assert_eq!(r.action, *action);
            assert_eq!(r.outcome, "ok");
            assert_eq!(r.subject.as_deref(), *subject);
            assert_eq!(r.grant_id.as_deref(), Some("g1"));
            assert_eq!(r.client_ip.as_deref(), Some("192.0.2.7"));
            assert_eq!(r.user_agent.as_deref(), Some("curl/8.5.0"));
            assert_eq!(r.reason, None);
            assert_eq!(r.request_id.as_deref(), *request_id);
            assert_eq!(r.occurrences, *occurrences);
            // A hash that was not lower-case hex reads back as its bytes.
            let altered = |h: &str| h.bytes().map(|b| format!("{b:02x}")).collect::<String>();
            let (prev, hash) = match seq {
                1 | 2 => (prev.clone(), hash.clone()),
                3 => (prev.clone(), altered(hash)),
                _ => (altered(prev), altered(hash)),
            };
            assert_eq!((&r.prev_hash, &r.hash), (&prev, &hash), "event {seq}");
        }
        let terms: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_terms")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        // file.fetch, reviewer.sign_in, ok, two subjects, g1, the address, the agent.
        assert_eq!(terms, 8);
    }

    /// The two dialects differ only in integer width: SQLite's INTEGER is
    /// 64-bit, PostgreSQL's is not.
    #[test]
    fn sqlite_and_postgres_migrations_are_kept_in_step() {
        let sqlite: Vec<_> = SQLITE_MIGRATIONS.iter().collect();
        let postgres: Vec<_> = POSTGRES_MIGRATIONS.iter().collect();
        assert_eq!(sqlite.len(), postgres.len());
        for (s, p) in sqlite.iter().zip(&postgres) {
            assert_eq!(s.version, p.version);
            assert_eq!(s.description, p.description);
            if IN_EACH_DIALECT.contains(&s.version) {
                continue;
            }
            assert_eq!(
                s.sql.as_str().replace("INTEGER", "BIGINT"),
                p.sql.as_str(),
                "migration {} differs beyond integer types",
                s.version
            );
        }
    }
}

/// A value bound to a query whose filters are chosen at run time.
#[derive(Clone, Debug)]
pub(crate) enum Bind {
    Text(String),
    Int(i64),
}

/// The `WHERE` clause of a query whose filters are chosen at run time, with
/// its values in placeholder order.
#[derive(Debug, Default)]
pub(crate) struct Where {
    clauses: Vec<String>,
    pub(crate) values: Vec<Bind>,
}

impl Where {
    /// Adds a condition with no value.
    pub(crate) fn and(&mut self, clause: &str) {
        self.clauses.push(clause.to_owned());
    }

    /// Adds a condition whose `$?` is the next placeholder, bound to `value`.
    pub(crate) fn and_bind(&mut self, clause: &str, value: Bind) {
        self.values.push(value);
        self.clauses
            .push(clause.replace("$?", &format!("${}", self.values.len())));
    }

    /// Adds `column IN (...)` over `values`; no value matches nothing.
    pub(crate) fn and_in(&mut self, column: &str, values: &[String]) {
        if values.is_empty() {
            self.clauses.push("1 = 0".into());
            return;
        }
        let mut placeholders = Vec::with_capacity(values.len());
        for v in values {
            self.values.push(Bind::Text(v.clone()));
            placeholders.push(format!("${}", self.values.len()));
        }
        self.clauses
            .push(format!("{column} IN ({})", placeholders.join(", ")));
    }

    /// `WHERE ...`, or nothing when no condition was added.
    pub(crate) fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    /// The placeholder after the last value.
    pub(crate) fn next(&self, n: usize) -> String {
        format!("${}", self.values.len() + n)
    }
}

/// `s` with the wildcards of SQL's `LIKE` escaped by `\`, to match literally.
pub(crate) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Binds every value of `w` to a query, in order.
#[macro_export]
macro_rules! bind_where {
    ($query:expr, $w:expr) => {{
        let mut query = $query;
        for value in &$w.values {
            query = match value {
                $crate::db::Bind::Text(v) => query.bind(v.as_str()),
                $crate::db::Bind::Int(v) => query.bind(*v),
            };
        }
        query
    }};
}
