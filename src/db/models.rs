//! Models, their releases and the files (weight shards) of each release.

use sqlx::{FromRow, any::AnyExecutor};

#[derive(Clone, Debug, FromRow)]
pub struct Model {
    pub id: String,
    pub(crate) slug: String,
    pub(crate) title: String,
    pub(crate) terms: String,
    pub(crate) terms_version: i64,
    pub(crate) created_at: i64,
    pub(crate) quota_bytes: Option<i64>,
    pub(crate) quota_files: Option<i64>,
    /// The application questions, a JSON array (see `crate::domain::questions`).
    pub(crate) questions: String,
    /// Days a denied researcher waits before applying again.
    pub(crate) reapply_after_days: i64,
}

#[derive(Clone, Debug, FromRow)]
pub struct Release {
    pub(crate) id: String,
    pub(crate) model_id: String,
    pub(crate) name: String,
    pub(crate) created_at: i64,
    pub(crate) published_at: Option<i64>,
    pub(crate) manifest: Option<String>,
    pub(crate) manifest_sig: Option<String>,
    pub(crate) sums: Option<String>,
    pub(crate) sums_sig: Option<String>,
    /// The OpenSSF Model Signing bundle (`model.sig`).
    pub(crate) model_sig: Option<String>,
}

#[derive(Clone, Debug, FromRow)]
pub(crate) struct File {
    pub(crate) id: String,
    pub(crate) release_id: String,
    pub(crate) name: String,
    pub(crate) object_key: String,
    pub(crate) size: i64,
    pub(crate) sha256: String,
    pub(crate) chunk_size: i64,
    /// JSON array of the chunks' SHA-256 in hex.
    pub(crate) chunks: String,
}

/// A file with the release and model it belongs to.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct FileInModel {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) object_key: String,
    pub(crate) size: i64,
    pub(crate) sha256: String,
    pub(crate) release_name: String,
    pub(crate) model_id: String,
    pub(crate) model_slug: String,
}

const MODEL_COLUMNS: &str = "id, slug, title, terms, terms_version, created_at, quota_bytes, quota_files, questions, reapply_after_days";

pub(crate) async fn insert_model<'c>(e: impl AnyExecutor<'c>, m: &Model) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO models (id, slug, title, terms, terms_version, created_at, quota_bytes, quota_files,
             questions, reapply_after_days)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&m.id)
    .bind(&m.slug)
    .bind(&m.title)
    .bind(&m.terms)
    .bind(m.terms_version)
    .bind(m.created_at)
    .bind(m.quota_bytes)
    .bind(m.quota_files)
    .bind(&m.questions)
    .bind(m.reapply_after_days)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn find_model_by_slug<'c>(e: impl AnyExecutor<'c>, slug: &str) -> sqlx::Result<Option<Model>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MODEL_COLUMNS} FROM models WHERE slug = $1"
    )))
    .bind(slug)
    .fetch_optional(e)
    .await
}

pub(crate) async fn find_model<'c>(e: impl AnyExecutor<'c>, id: &str) -> sqlx::Result<Option<Model>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MODEL_COLUMNS} FROM models WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(e)
    .await
}

pub(crate) async fn list_models<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Vec<Model>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MODEL_COLUMNS} FROM models ORDER BY slug"
    )))
    .fetch_all(e)
    .await
}

pub(crate) async fn find_release<'c>(
    e: impl AnyExecutor<'c>,
    model_id: &str,
    name: &str,
) -> sqlx::Result<Option<Release>> {
    sqlx::query_as(
        "SELECT id, model_id, name, created_at, published_at, manifest, manifest_sig, sums, sums_sig, model_sig FROM releases WHERE model_id = $1 AND name = $2",
    )
    .bind(model_id)
    .bind(name)
    .fetch_optional(e)
    .await
}

pub(crate) async fn count_releases<'c>(e: impl AnyExecutor<'c>, model_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM releases WHERE model_id = $1")
        .bind(model_id)
        .fetch_one(e)
        .await
}

/// Writes a release with its model card (Markdown), if it has one.
pub(crate) async fn insert_release<'c>(
    e: impl AnyExecutor<'c>,
    r: &Release,
    card: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO releases (id, model_id, name, created_at, published_at, manifest, manifest_sig, sums, sums_sig, model_sig, card)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&r.id)
    .bind(&r.model_id)
    .bind(&r.name)
    .bind(r.created_at)
    .bind(r.published_at)
    .bind(&r.manifest)
    .bind(&r.manifest_sig)
    .bind(&r.sums)
    .bind(&r.sums_sig)
    .bind(&r.model_sig)
    .bind(card)
    .execute(e)
    .await?;
    Ok(())
}

/// The model card of a model's newest published release that has one.
pub(crate) async fn newest_card<'c>(e: impl AnyExecutor<'c>, model_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT card FROM releases
         WHERE model_id = $1 AND published_at IS NOT NULL AND card IS NOT NULL
         ORDER BY published_at DESC, name DESC LIMIT 1",
    )
    .bind(model_id)
    .fetch_optional(e)
    .await
}

/// Each model's newest model card, by model id: the catalogue's summaries.
pub(crate) async fn newest_cards<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT r.model_id, r.card FROM releases r
         WHERE r.published_at IS NOT NULL AND r.card IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM releases n
                           WHERE n.model_id = r.model_id AND n.published_at IS NOT NULL AND n.card IS NOT NULL
                             AND (n.published_at > r.published_at
                                  OR (n.published_at = r.published_at AND n.name > r.name)))",
    )
    .fetch_all(e)
    .await
}

pub async fn published_releases<'c>(e: impl AnyExecutor<'c>, model_id: &str) -> sqlx::Result<Vec<Release>> {
    sqlx::query_as(
        "SELECT id, model_id, name, created_at, published_at, manifest, manifest_sig, sums, sums_sig, model_sig FROM releases
         WHERE model_id = $1 AND published_at IS NOT NULL ORDER BY published_at, name",
    )
    .bind(model_id)
    .fetch_all(e)
    .await
}

/// What every model with a published release offers: its id, its published
/// releases, their files and bytes, in one query.
pub(crate) async fn published_totals_by_model<'c>(
    e: impl AnyExecutor<'c>,
) -> sqlx::Result<Vec<(String, i64, i64, i64)>> {
    sqlx::query_as(
        "SELECT r.model_id, COUNT(DISTINCT r.id), COUNT(f.id), CAST(COALESCE(SUM(f.size), 0) AS BIGINT)
         FROM releases r LEFT JOIN files f ON f.release_id = r.id
         WHERE r.published_at IS NOT NULL
         GROUP BY r.model_id",
    )
    .fetch_all(e)
    .await
}

/// How many files the published releases of a model hold, and their bytes.
pub(crate) async fn published_totals<'c>(
    e: impl AnyExecutor<'c>,
    model_id: &str,
) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(
        "SELECT COUNT(f.id), CAST(COALESCE(SUM(f.size), 0) AS BIGINT)
         FROM files f JOIN releases r ON r.id = f.release_id
         WHERE r.model_id = $1 AND r.published_at IS NOT NULL",
    )
    .bind(model_id)
    .fetch_one(e)
    .await
}

pub(crate) async fn insert_file<'c>(e: impl AnyExecutor<'c>, f: &File) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO files (id, release_id, name, object_key, size, sha256, chunk_size, chunks)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&f.id)
    .bind(&f.release_id)
    .bind(&f.name)
    .bind(&f.object_key)
    .bind(f.size)
    .bind(&f.sha256)
    .bind(f.chunk_size)
    .bind(&f.chunks)
    .execute(e)
    .await?;
    Ok(())
}

pub(crate) async fn files_of_release<'c>(
    e: impl AnyExecutor<'c>,
    release_id: &str,
) -> sqlx::Result<Vec<File>> {
    sqlx::query_as(
        "SELECT id, release_id, name, object_key, size, sha256, chunk_size, chunks FROM files WHERE release_id = $1 ORDER BY name",
    )
    .bind(release_id)
    .fetch_all(e)
    .await
}

/// A file of a published release, with its model.
pub(crate) async fn find_published_file<'c>(
    e: impl AnyExecutor<'c>,
    file_id: &str,
) -> sqlx::Result<Option<FileInModel>> {
    sqlx::query_as(
        "SELECT f.id, f.name, f.object_key, f.size, f.sha256, r.name AS release_name,
                m.id AS model_id, m.slug AS model_slug
         FROM files f JOIN releases r ON r.id = f.release_id JOIN models m ON m.id = r.model_id
         WHERE f.id = $1 AND r.published_at IS NOT NULL",
    )
    .bind(file_id)
    .fetch_optional(e)
    .await
}

pub(crate) async fn set_quota<'c>(
    e: impl AnyExecutor<'c>,
    model_id: &str,
    quota_bytes: Option<i64>,
    quota_files: Option<i64>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE models SET quota_bytes = $2, quota_files = $3 WHERE id = $1")
        .bind(model_id)
        .bind(quota_bytes)
        .bind(quota_files)
        .execute(e)
        .await?;
    Ok(())
}

/// Records a version of a model's terms.
pub(crate) async fn insert_terms<'c>(
    e: impl AnyExecutor<'c>,
    model_id: &str,
    version: i64,
    terms: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO model_terms (model_id, version, terms, created_at) VALUES ($1, $2, $3, $4)")
        .bind(model_id)
        .bind(version)
        .bind(terms)
        .bind(now)
        .execute(e)
        .await?;
    Ok(())
}

/// Makes `terms` the current version of the model's terms.
pub(crate) async fn set_current_terms<'c>(
    e: impl AnyExecutor<'c>,
    model_id: &str,
    version: i64,
    terms: &str,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE models SET terms = $2, terms_version = $3 WHERE id = $1")
        .bind(model_id)
        .bind(terms)
        .bind(version)
        .execute(e)
        .await?;
    Ok(())
}

/// One version of a model's terms.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct TermsVersion {
    pub(crate) version: i64,
    pub(crate) terms: String,
    pub(crate) created_at: i64,
}

pub(crate) async fn find_terms<'c>(
    e: impl AnyExecutor<'c>,
    model_id: &str,
    version: i64,
) -> sqlx::Result<Option<TermsVersion>> {
    sqlx::query_as("SELECT version, terms, created_at FROM model_terms WHERE model_id = $1 AND version = $2")
        .bind(model_id)
        .bind(version)
        .fetch_optional(e)
        .await
}

pub(crate) async fn set_questions<'c>(
    e: impl AnyExecutor<'c>,
    model_id: &str,
    questions: &str,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE models SET questions = $2 WHERE id = $1")
        .bind(model_id)
        .bind(questions)
        .execute(e)
        .await?;
    Ok(())
}

pub(crate) async fn set_reapply_after_days<'c>(
    e: impl AnyExecutor<'c>,
    model_id: &str,
    days: i64,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE models SET reapply_after_days = $2 WHERE id = $1")
        .bind(model_id)
        .bind(days)
        .execute(e)
        .await?;
    Ok(())
}

/// How long (ms) each of the model's latest `limit` decisions took, from the
/// e-mail confirmation to the decision.
pub(crate) async fn recent_review_durations<'c>(
    e: impl AnyExecutor<'c>,
    model_id: &str,
    limit: i64,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT decided_at - confirmed_at FROM applications
         WHERE model_id = $1 AND decided_at IS NOT NULL AND confirmed_at IS NOT NULL
         ORDER BY decided_at DESC LIMIT $2",
    )
    .bind(model_id)
    .bind(limit)
    .fetch_all(e)
    .await
}
