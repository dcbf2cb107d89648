//! Reviewer accounts.

use sqlx::{FromRow, any::AnyExecutor};

#[derive(Clone, Debug, FromRow)]
pub struct Reviewer {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub is_admin: i64,
    pub created_at: i64,
}

/// Creates the reviewer, or sets a new password and role if the e-mail exists.
/// Returns the reviewer's id.
pub async fn upsert<'c>(
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
    sqlx::query_as("SELECT id, email, password_hash, is_admin, created_at FROM reviewers WHERE email = $1")
        .bind(email)
        .fetch_optional(e)
        .await
}

pub async fn find<'c>(e: impl AnyExecutor<'c>, id: &str) -> sqlx::Result<Option<Reviewer>> {
    sqlx::query_as("SELECT id, email, password_hash, is_admin, created_at FROM reviewers WHERE id = $1")
        .bind(id)
        .fetch_optional(e)
        .await
}

pub async fn list<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Vec<Reviewer>> {
    sqlx::query_as("SELECT id, email, password_hash, is_admin, created_at FROM reviewers ORDER BY email")
        .fetch_all(e)
        .await
}
