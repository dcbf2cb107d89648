//! How each model is reviewed: approvals needed, automatic approval, the
//! overdue target, the reviewers assigned to it, and denial templates.

use sqlx::{FromRow, any::AnyExecutor};

use crate::db::Tx;

#[derive(Clone, Debug, FromRow)]
pub(crate) struct ReviewPolicy {
    pub(crate) model_id: String,
    pub(crate) model_slug: String,
    pub(crate) approvals_needed: i64,
    pub(crate) auto_approve_domains: Option<String>,
    pub(crate) review_target_days: i64,
}

const POLICY: &str = "SELECT id AS model_id, slug AS model_slug, approvals_needed, auto_approve_domains,
        review_target_days FROM models";

pub(crate) async fn find<'c>(e: impl AnyExecutor<'c>, model_id: &str) -> sqlx::Result<Option<ReviewPolicy>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{POLICY} WHERE id = $1")))
        .bind(model_id)
        .fetch_optional(e)
        .await
}

pub(crate) async fn list<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Vec<ReviewPolicy>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{POLICY} ORDER BY slug")))
        .fetch_all(e)
        .await
}

pub(crate) async fn set(tx: &mut Tx, p: &ReviewPolicy) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE models SET approvals_needed = $2, auto_approve_domains = $3, review_target_days = $4
         WHERE id = $1",
    )
    .bind(&p.model_id)
    .bind(p.approvals_needed)
    .bind(&p.auto_approve_domains)
    .bind(p.review_target_days)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Assigns a reviewer to a model; `false` when they already were.
pub(crate) async fn assign(tx: &mut Tx, model_id: &str, reviewer_id: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO model_reviewers (model_id, reviewer_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(model_id)
    .bind(reviewer_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Takes a reviewer off a model; `false` when they were not assigned.
pub(crate) async fn unassign(tx: &mut Tx, model_id: &str, reviewer_id: &str) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM model_reviewers WHERE model_id = $1 AND reviewer_id = $2")
        .bind(model_id)
        .bind(reviewer_id)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The ids of the models a reviewer is assigned to.
pub(crate) async fn models_of<'c>(e: impl AnyExecutor<'c>, reviewer_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT model_id FROM model_reviewers WHERE reviewer_id = $1 ORDER BY model_id")
        .bind(reviewer_id)
        .fetch_all(e)
        .await
}

/// Every assignment as (model slug, reviewer e-mail).
pub(crate) async fn assignments<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT m.slug, r.email FROM model_reviewers x
         JOIN models m ON m.id = x.model_id JOIN reviewers r ON r.id = x.reviewer_id
         ORDER BY m.slug, r.email",
    )
    .fetch_all(e)
    .await
}

#[derive(Clone, Debug, FromRow)]
pub(crate) struct DenyTemplate {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) body: String,
    pub(crate) created_at: i64,
}

pub(crate) async fn deny_templates<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Vec<DenyTemplate>> {
    sqlx::query_as("SELECT id, title, body, created_at FROM deny_templates ORDER BY title")
        .fetch_all(e)
        .await
}

/// Creates the template, or replaces the text of the one with this title.
pub(crate) async fn save_deny_template(tx: &mut Tx, t: &DenyTemplate) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO deny_templates (id, title, body, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (title) DO UPDATE SET body = excluded.body",
    )
    .bind(&t.id)
    .bind(&t.title)
    .bind(&t.body)
    .bind(t.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) async fn delete_deny_template(tx: &mut Tx, id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("DELETE FROM deny_templates WHERE id = $1 RETURNING title")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
}
