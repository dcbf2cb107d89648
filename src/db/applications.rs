//! Researchers, their applications and the reviewers' decisions on them.

use sqlx::{FromRow, any::AnyExecutor};

use crate::{
    bind_where,
    db::{Bind, Tx, Where, like_escape},
    types::states::{Author, Decision, Kind, Status},
};

/// Returns the id of the researcher with this (normalised) e-mail, creating them if new.
pub(crate) async fn upsert_researcher(
    tx: &mut Tx,
    new_id: &str,
    email: &str,
    now: i64,
) -> sqlx::Result<String> {
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

pub(crate) struct NewApplication<'a> {
    pub(crate) id: &'a str,
    pub(crate) model_id: &'a str,
    pub(crate) researcher_id: &'a str,
    pub(crate) name: &'a str,
    pub(crate) affiliation: &'a str,
    pub(crate) intended_use: &'a str,
    pub(crate) terms_version: i64,
    pub(crate) confirm_token_hash: &'a str,
    pub(crate) created_at: i64,
    /// `Unconfirmed`, or `Pending` when the researcher is known to own the address.
    pub(crate) status: Status,
    pub(crate) confirmed_at: Option<i64>,
    /// JSON array of `crate::domain::questions::Answer`.
    pub(crate) answers: &'a str,
    /// What it asks for: a renewal names `grant_id`, an appeal `parent_id`.
    pub(crate) kind: Kind,
    pub(crate) parent_id: Option<&'a str>,
    pub(crate) grant_id: Option<&'a str>,
}

pub(crate) async fn insert_application(tx: &mut Tx, a: &NewApplication<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO applications (id, model_id, researcher_id, name, affiliation, intended_use,
             terms_version, status, confirm_token_hash, created_at, confirmed_at, answers, kind,
             parent_id, grant_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(a.id)
    .bind(a.model_id)
    .bind(a.researcher_id)
    .bind(a.name)
    .bind(a.affiliation)
    .bind(a.intended_use)
    .bind(a.terms_version)
    .bind(a.status.as_str())
    .bind(a.confirm_token_hash)
    .bind(a.created_at)
    .bind(a.confirmed_at)
    .bind(a.answers)
    .bind(a.kind.as_str())
    .bind(a.parent_id)
    .bind(a.grant_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An application with the researcher's e-mail and the model's names.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct ApplicationView {
    pub(crate) id: String,
    pub(crate) model_id: String,
    pub(crate) researcher_id: String,
    pub(crate) name: String,
    pub(crate) affiliation: String,
    pub(crate) intended_use: String,
    pub(crate) terms_version: i64,
    #[sqlx(try_from = "String")]
    pub(crate) status: Status,
    pub(crate) created_at: i64,
    pub(crate) confirmed_at: Option<i64>,
    pub(crate) decided_at: Option<i64>,
    pub(crate) email: String,
    pub(crate) model_slug: String,
    pub(crate) model_title: String,
    /// JSON array of `crate::domain::questions::Answer`.
    pub(crate) answers: String,
    #[sqlx(try_from = "String")]
    pub(crate) kind: Kind,
    /// The denied application an appeal is about.
    pub(crate) parent_id: Option<String>,
    /// The grant a renewal would extend.
    pub(crate) grant_id: Option<String>,
}

const VIEW: &str = "SELECT a.id, a.model_id, a.researcher_id, a.name, a.affiliation, a.intended_use,
        a.terms_version, a.status, a.created_at, a.confirmed_at, a.decided_at,
        r.email, m.slug AS model_slug, m.title AS model_title,
        a.answers, a.kind, a.parent_id, a.grant_id
    FROM applications a
    JOIN researchers r ON r.id = a.researcher_id
    JOIN models m ON m.id = a.model_id";

pub(crate) async fn find_view<'c>(
    e: impl AnyExecutor<'c>,
    id: &str,
) -> sqlx::Result<Option<ApplicationView>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{VIEW} WHERE a.id = $1")))
        .bind(id)
        .fetch_optional(e)
        .await
}

pub(crate) async fn find_view_by_token<'c>(
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

/// Moves an unconfirmed application to the queue; `false` when it was not unconfirmed.
pub(crate) async fn mark_confirmed(tx: &mut Tx, id: &str, now: i64) -> sqlx::Result<bool> {
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
pub(crate) async fn mark_decided(tx: &mut Tx, id: &str, status: Status, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE applications SET status = $2, decided_at = $3
         WHERE id = $1 AND status IN ('pending', 'info_requested')",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One reviewer's decision on an application.
pub(crate) struct NewReview<'a> {
    pub(crate) id: &'a str,
    pub(crate) application_id: &'a str,
    pub(crate) reviewer_id: &'a str,
    pub(crate) decision: Decision,
    pub(crate) reason: Option<&'a str>,
    pub(crate) grant_days: Option<i64>,
    pub(crate) note: Option<&'a str>,
    pub(crate) created_at: i64,
}

pub(crate) async fn insert_review(tx: &mut Tx, r: &NewReview<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO reviews (id, application_id, reviewer_id, decision, reason, grant_days, note, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(r.id)
    .bind(r.application_id)
    .bind(r.reviewer_id)
    .bind(r.decision.as_str())
    .bind(r.reason)
    .bind(r.grant_days)
    .bind(r.note)
    .bind(r.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Clone, Debug, FromRow)]
pub(crate) struct ReviewView {
    pub(crate) reviewer_email: String,
    #[sqlx(try_from = "String")]
    pub(crate) decision: Decision,
    pub(crate) reason: Option<String>,
    pub(crate) grant_days: Option<i64>,
    pub(crate) note: Option<String>,
    pub(crate) created_at: i64,
}

pub(crate) async fn reviews_of<'c>(
    e: impl AnyExecutor<'c>,
    application_id: &str,
) -> sqlx::Result<Vec<ReviewView>> {
    sqlx::query_as(
        "SELECT v.email AS reviewer_email, r.decision, r.reason, r.grant_days, r.note, r.created_at
         FROM reviews r JOIN reviewers v ON v.id = r.reviewer_id
         WHERE r.application_id = $1 ORDER BY r.created_at",
    )
    .bind(application_id)
    .fetch_all(e)
    .await
}

/// Locks a pending application for the rest of the transaction, so that
/// decisions on it are taken one at a time; `false` when it is not pending.
pub(crate) async fn lock_pending(tx: &mut Tx, id: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE applications SET status = status WHERE id = $1 AND status IN ('pending', 'info_requested')",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One approval so far: who, the grant length they chose, their note.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct ApprovalSoFar {
    pub(crate) reviewer_id: String,
    pub(crate) grant_days: Option<i64>,
    pub(crate) note: Option<String>,
}

/// The approvals an application has so far that still count, oldest first:
/// those of reviewers who are enabled and may still decide for its model
/// (admins, or reviewers assigned to it). An approval by someone since
/// disabled or taken off the model no longer counts towards the policy.
pub(crate) async fn approvals<'c>(
    e: impl AnyExecutor<'c>,
    application_id: &str,
) -> sqlx::Result<Vec<ApprovalSoFar>> {
    sqlx::query_as(
        "SELECT r.reviewer_id, r.grant_days, r.note
         FROM reviews r
         JOIN applications a ON a.id = r.application_id
         JOIN reviewers rv ON rv.id = r.reviewer_id
         WHERE r.application_id = $1 AND r.decision = 'approve' AND rv.disabled_at IS NULL
           AND (rv.is_admin <> 0 OR EXISTS (
               SELECT 1 FROM model_reviewers mr WHERE mr.reviewer_id = rv.id AND mr.model_id = a.model_id))
         ORDER BY r.created_at, r.id",
    )
    .bind(application_id)
    .fetch_all(e)
    .await
    .map(|all: Vec<ApprovalSoFar>| {
        // One approval per reviewer, however often they approved.
        let mut seen = std::collections::HashSet::new();
        all.into_iter()
            .filter(|a| seen.insert(a.reviewer_id.clone()))
            .collect()
    })
}

/// Which applications the reviewers' queue shows.
#[derive(Clone, Debug, Default)]
pub(crate) struct QueueFilter {
    /// Only these models (a reviewer's assignments); `None` for every model.
    pub(crate) model_ids: Option<Vec<String>>,
    pub(crate) model_slug: Option<String>,
    /// A status, or `None` for all of them.
    pub(crate) status: Option<Status>,
    /// Confirmed at least this long ago (milliseconds).
    pub(crate) waited_at_least: Option<i64>,
    /// The domain of the researcher's e-mail (or a parent domain).
    pub(crate) domain: Option<String>,
    /// Text found in the name, affiliation, intended use or e-mail.
    pub(crate) text: Option<String>,
    pub(crate) sort: QueueSort,
    pub(crate) limit: i64,
    pub(crate) offset: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum QueueSort {
    /// Longest waiting first.
    #[default]
    Oldest,
    Newest,
    Model,
}

/// Applications matching `f`, and how many match in all.
pub(crate) async fn search(
    pool: &sqlx::AnyPool,
    f: &QueueFilter,
    now: i64,
) -> sqlx::Result<(Vec<ApplicationView>, i64)> {
    let mut w = Where::default();
    if let Some(ids) = &f.model_ids {
        w.and_in("a.model_id", ids);
    }
    if let Some(slug) = &f.model_slug {
        w.and_bind("m.slug = $?", Bind::Text(slug.clone()));
    }
    if let Some(status) = &f.status {
        w.and_bind("a.status = $?", Bind::Text(status.as_str().to_owned()));
    }
    if let Some(waited) = f.waited_at_least {
        w.and_bind("a.confirmed_at <= $?", Bind::Int(now.saturating_sub(waited)));
    }
    if let Some(domain) = &f.domain {
        let domain = like_escape(&domain.to_lowercase());
        w.values.push(Bind::Text(format!("%@{domain}")));
        w.values.push(Bind::Text(format!("%.{domain}")));
        let n = w.values.len();
        w.and(&format!(
            "(LOWER(r.email) LIKE ${} ESCAPE '\\' OR LOWER(r.email) LIKE ${n} ESCAPE '\\')",
            n - 1
        ));
    }
    if let Some(text) = &f.text {
        w.values
            .push(Bind::Text(format!("%{}%", like_escape(&text.to_lowercase()))));
        let n = w.values.len();
        w.and(&format!(
            "(LOWER(a.name) LIKE ${n} ESCAPE '\\' OR LOWER(a.affiliation) LIKE ${n} ESCAPE '\\'
              OR LOWER(a.intended_use) LIKE ${n} ESCAPE '\\' OR LOWER(r.email) LIKE ${n} ESCAPE '\\'
              OR LOWER(a.answers) LIKE ${n} ESCAPE '\\')"
        ));
    }
    let order = match f.sort {
        QueueSort::Oldest => "COALESCE(a.confirmed_at, a.created_at), a.id",
        QueueSort::Newest => "COALESCE(a.confirmed_at, a.created_at) DESC, a.id",
        QueueSort::Model => "m.slug, COALESCE(a.confirmed_at, a.created_at), a.id",
    };
    let count_sql = format!(
        "SELECT COUNT(*) FROM applications a JOIN researchers r ON r.id = a.researcher_id
         JOIN models m ON m.id = a.model_id{}",
        w.sql()
    );
    let total: i64 = bind_where!(sqlx::query_scalar(sqlx::AssertSqlSafe(count_sql)), w)
        .fetch_one(pool)
        .await?;
    let list_sql = format!(
        "{VIEW}{} ORDER BY {order} LIMIT {} OFFSET {}",
        w.sql(),
        w.next(1),
        w.next(2)
    );
    let rows = bind_where!(sqlx::query_as(sqlx::AssertSqlSafe(list_sql)), w)
        .bind(f.limit)
        .bind(f.offset)
        .fetch_all(pool)
        .await?;
    Ok((rows, total))
}

/// Every application of a researcher, newest first.
pub(crate) async fn list_of_researcher<'c>(
    e: impl AnyExecutor<'c>,
    researcher_id: &str,
) -> sqlx::Result<Vec<ApplicationView>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIEW} WHERE a.researcher_id = $1 ORDER BY a.created_at DESC, a.id"
    )))
    .bind(researcher_id)
    .fetch_all(e)
    .await
}

/// How many distinct reviewers approved each of these applications so far.
pub(crate) async fn approval_counts(
    pool: &sqlx::AnyPool,
    ids: &[String],
) -> sqlx::Result<std::collections::HashMap<String, i64>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let mut w = Where::default();
    w.and("decision = 'approve'");
    w.and_in("application_id", ids);
    let sql = format!(
        "SELECT application_id, COUNT(DISTINCT reviewer_id) FROM reviews{} GROUP BY application_id",
        w.sql()
    );
    let rows: Vec<(String, i64)> = bind_where!(sqlx::query_as(sqlx::AssertSqlSafe(sql)), w)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Moves an application from one status to another; `false` when it was
/// not in `from` any more.
pub(crate) async fn set_status(tx: &mut Tx, id: &str, from: Status, to: Status) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE applications SET status = $3 WHERE id = $1 AND status = $2")
        .bind(id)
        .bind(from.as_str())
        .bind(to.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The appeal made against a denied application, if any.
pub(crate) async fn appeal_of<'c>(e: impl AnyExecutor<'c>, parent_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT id FROM applications WHERE parent_id = $1 AND kind = 'appeal'")
        .bind(parent_id)
        .fetch_optional(e)
        .await
}

/// A renewal of the grant that still waits for a decision, if any.
pub(crate) async fn open_renewal<'c>(
    e: impl AnyExecutor<'c>,
    grant_id: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT id FROM applications WHERE grant_id = $1 AND kind = 'renewal'
         AND status IN ('pending', 'info_requested')",
    )
    .bind(grant_id)
    .fetch_optional(e)
    .await
}

/// One message of an application's thread.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct Message {
    pub(crate) id: String,
    pub(crate) application_id: String,
    #[sqlx(try_from = "String")]
    pub(crate) author_kind: Author,
    pub(crate) author_email: String,
    pub(crate) body: String,
    pub(crate) created_at: i64,
}

pub(crate) async fn insert_message(tx: &mut Tx, m: &Message) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO application_messages (id, application_id, author_kind, author_email, body, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&m.id)
    .bind(&m.application_id)
    .bind(m.author_kind.as_str())
    .bind(&m.author_email)
    .bind(&m.body)
    .bind(m.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An application's thread, oldest first.
pub(crate) async fn messages_of<'c>(
    e: impl AnyExecutor<'c>,
    application_id: &str,
) -> sqlx::Result<Vec<Message>> {
    sqlx::query_as(
        "SELECT id, application_id, author_kind, author_email, body, created_at
         FROM application_messages WHERE application_id = $1 ORDER BY created_at, id",
    )
    .bind(application_id)
    .fetch_all(e)
    .await
}
