//! Reviewer accounts.

use sqlx::{FromRow, any::AnyExecutor};

use crate::types::states::Notify;

#[derive(Clone, Debug, FromRow)]
pub struct Reviewer {
    pub id: String,
    pub(crate) email: String,
    pub password_hash: String,
    pub(crate) is_admin: i64,
    pub(crate) created_at: i64,
    #[sqlx(try_from = "String")]
    pub notify: Notify,
    pub(crate) last_digest_at: Option<i64>,
    pub disabled_at: Option<i64>,
    /// Raised whenever the account's sessions must end.
    pub(crate) session_epoch: i64,
}

impl Reviewer {
    pub fn is_admin(&self) -> bool {
        self.is_admin != 0
    }
}

const COLUMNS: &str =
    "SELECT id, email, password_hash, is_admin, created_at, notify, last_digest_at, disabled_at, session_epoch
    FROM reviewers";

/// Creates the reviewer, or sets a new password and role if the e-mail exists.
/// Returns the reviewer's id.
/// Inserts a new reviewer; `None` when the address already has an account.
pub(crate) async fn insert<'c>(
    e: impl AnyExecutor<'c>,
    new_id: &str,
    email: &str,
    password_hash: &str,
    is_admin: bool,
    now: i64,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "INSERT INTO reviewers (id, email, password_hash, is_admin, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (email) DO NOTHING
         RETURNING id",
    )
    .bind(new_id)
    .bind(email)
    .bind(password_hash)
    .bind(i64::from(is_admin))
    .bind(now)
    .fetch_optional(e)
    .await
}

pub(crate) async fn upsert<'c>(
    e: impl AnyExecutor<'c>,
    new_id: &str,
    email: &str,
    password_hash: &str,
    is_admin: bool,
    now: i64,
) -> sqlx::Result<String> {
    sqlx::query_scalar(
        "INSERT INTO reviewers (id, email, password_hash, is_admin, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (email) DO UPDATE SET password_hash = excluded.password_hash, is_admin = excluded.is_admin
         RETURNING id",
    )
    .bind(new_id)
    .bind(email)
    .bind(password_hash)
    .bind(i64::from(is_admin))
    .bind(now)
    .fetch_one(e)
    .await
}

pub async fn find_by_email<'c>(e: impl AnyExecutor<'c>, email: &str) -> sqlx::Result<Option<Reviewer>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{COLUMNS} WHERE email = $1")))
        .bind(email)
        .fetch_optional(e)
        .await
}

pub(crate) async fn find<'c>(e: impl AnyExecutor<'c>, id: &str) -> sqlx::Result<Option<Reviewer>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{COLUMNS} WHERE id = $1")))
        .bind(id)
        .fetch_optional(e)
        .await
}

pub(crate) async fn list<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Vec<Reviewer>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{COLUMNS} ORDER BY email")))
        .fetch_all(e)
        .await
}

/// Sets how a reviewer hears of waiting applications.
pub(crate) async fn set_notify<'c>(e: impl AnyExecutor<'c>, id: &str, notify: Notify) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE reviewers SET notify = $2 WHERE id = $1")
        .bind(id)
        .bind(notify.as_str())
        .execute(e)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Sets a reviewer's password hash.
pub(crate) async fn set_password<'c>(
    e: impl AnyExecutor<'c>,
    id: &str,
    password_hash: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE reviewers SET password_hash = $2 WHERE id = $1")
        .bind(id)
        .bind(password_hash)
        .execute(e)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Disables (`Some(now)`) or re-enables (`None`) a reviewer's sign-in.
pub(crate) async fn set_disabled<'c>(
    e: impl AnyExecutor<'c>,
    id: &str,
    disabled_at: Option<i64>,
) -> sqlx::Result<bool> {
    // Disabling also ends every session: they stay ended if it is enabled again.
    let done = sqlx::query(
        "UPDATE reviewers SET disabled_at = $2,
            session_epoch = session_epoch + CASE WHEN $2 IS NULL THEN 0 ELSE 1 END
         WHERE id = $1",
    )
    .bind(id)
    .bind(disabled_at)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Admins who can sign in.
pub(crate) async fn enabled_admins<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM reviewers WHERE is_admin <> 0 AND disabled_at IS NULL")
        .fetch_one(e)
        .await
}

pub(crate) async fn set_admin<'c>(e: impl AnyExecutor<'c>, id: &str, is_admin: bool) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE reviewers SET is_admin = $2 WHERE id = $1")
        .bind(id)
        .bind(i64::from(is_admin))
        .execute(e)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Active reviewers who may decide applications for the model: the ones
/// assigned to it, or every admin when nobody is.
pub(crate) async fn deciders_of<'c>(e: impl AnyExecutor<'c>, model_id: &str) -> sqlx::Result<Vec<Reviewer>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{COLUMNS} WHERE disabled_at IS NULL AND (
            id IN (SELECT reviewer_id FROM model_reviewers WHERE model_id = $1)
            OR (is_admin = 1 AND NOT EXISTS (SELECT 1 FROM model_reviewers WHERE model_id = $1))
         ) ORDER BY email"
    )))
    .bind(model_id)
    .fetch_all(e)
    .await
}

/// Marks a digest sent.
pub(crate) async fn digest_sent<'c>(e: impl AnyExecutor<'c>, id: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE reviewers SET last_digest_at = $2 WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(e)
        .await?;
    Ok(())
}
