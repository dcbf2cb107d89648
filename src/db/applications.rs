//! Researchers, their applications and the reviewers' decisions on them.

use sqlx::{FromRow, any::AnyExecutor};

use crate::db::Tx;

/// Returns the id of the researcher with this (normalised) e-mail, creating them if new.
pub async fn upsert_researcher(tx: &mut Tx, new_id: &str, email: &str, now: i64) -> sqlx::Result<String> {
    sqlx::query(
        "INSERT INTO researchers (id, email, created_at) VALUES ($1, $2, $3) ON CONFLICT (email) DO NOTHING",
    )
    .bind(new_id)
    .bind(email)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query_scalar("SELECT id FROM researchers WHERE email = $1")
        .bind(email)
        .fetch_one(&mut **tx)
        .await
}

pub struct NewApplication<'a> {
    pub id: &'a str,
    pub model_id: &'a str,
    pub researcher_id: &'a str,
    pub name: &'a str,
    pub affiliation: &'a str,
    pub intended_use: &'a str,
    pub terms_version: i64,
    pub confirm_token_hash: &'a str,
    pub created_at: i64,
}

pub async fn insert_application(tx: &mut Tx, a: &NewApplication<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO applications (id, model_id, researcher_id, name, affiliation, intended_use,
             terms_version, status, confirm_token_hash, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'unconfirmed', $8, $9)",
    )
    .bind(a.id)
    .bind(a.model_id)
    .bind(a.researcher_id)
    .bind(a.name)
    .bind(a.affiliation)
    .bind(a.intended_use)
    .bind(a.terms_version)
    .bind(a.confirm_token_hash)
    .bind(a.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An application with the researcher's e-mail and the model's names.
#[derive(Clone, Debug, FromRow)]
pub struct ApplicationView {
    pub id: String,
    pub model_id: String,
    pub researcher_id: String,
    pub name: String,
    pub affiliation: String,
    pub intended_use: String,
    pub terms_version: i64,
    pub status: String,
    pub created_at: i64,
    pub confirmed_at: Option<i64>,
    pub decided_at: Option<i64>,
    pub email: String,
    pub model_slug: String,
    pub model_title: String,
}

const VIEW: &str = "SELECT a.id, a.model_id, a.researcher_id, a.name, a.affiliation, a.intended_use,
        a.terms_version, a.status, a.created_at, a.confirmed_at, a.decided_at,
        r.email, m.slug AS model_slug, m.title AS model_title
    FROM applications a
    JOIN researchers r ON r.id = a.researcher_id
    JOIN models m ON m.id = a.model_id";

pub async fn find_view<'c>(e: impl AnyExecutor<'c>, id: &str) -> sqlx::Result<Option<ApplicationView>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{VIEW} WHERE a.id = $1")))
        .bind(id)
        .fetch_optional(e)
        .await
}

pub async fn find_view_by_token<'c>(
    e: impl AnyExecutor<'c>,
    token_hash: &str,
) -> sqlx::Result<Option<ApplicationView>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIEW} WHERE a.confirm_token_hash = $1"
    )))
    .bind(token_hash)
    .fetch_optional(e)
    .await
}

/// Confirmed applications waiting for a decision, oldest first.
pub async fn list_pending<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Vec<ApplicationView>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIEW} WHERE a.status = 'pending' ORDER BY a.confirmed_at, a.id"
    )))
    .fetch_all(e)
    .await
}

/// Recently decided applications, newest first.
pub async fn list_decided<'c>(e: impl AnyExecutor<'c>, limit: i64) -> sqlx::Result<Vec<ApplicationView>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIEW} WHERE a.status IN ('approved', 'denied') ORDER BY a.decided_at DESC, a.id LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(e)
    .await
}

/// Moves an unconfirmed application to the queue; `false` when it was not unconfirmed.
pub async fn mark_confirmed(tx: &mut Tx, id: &str, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE applications SET status = 'pending', confirmed_at = $2 WHERE id = $1 AND status = 'unconfirmed'",
    )
    .bind(id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records the final state of a pending application; `false` when it was no longer pending.
pub async fn mark_decided(tx: &mut Tx, id: &str, status: &str, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE applications SET status = $2, decided_at = $3 WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(status)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn insert_review(
    tx: &mut Tx,
    id: &str,
    application_id: &str,
    reviewer_id: &str,
    decision: &str,
    reason: Option<&str>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO reviews (id, application_id, reviewer_id, decision, reason, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(application_id)
    .bind(reviewer_id)
    .bind(decision)
    .bind(reason)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Clone, Debug, FromRow)]
pub struct ReviewView {
    pub reviewer_email: String,
    pub decision: String,
    pub reason: Option<String>,
    pub created_at: i64,
}

pub async fn reviews_of<'c>(e: impl AnyExecutor<'c>, application_id: &str) -> sqlx::Result<Vec<ReviewView>> {
    sqlx::query_as(
        "SELECT v.email AS reviewer_email, r.decision, r.reason, r.created_at
         FROM reviews r JOIN reviewers v ON v.id = r.reviewer_id
         WHERE r.application_id = $1 ORDER BY r.created_at",
    )
    .bind(application_id)
    .fetch_all(e)
    .await
}
