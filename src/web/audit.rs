//! The admins' view of the audit log: the same filters as `weightgate audit
//! list`, a chart of downloads per day for each model, and each grant's history.

use super::auth::Csrf;
use axum::{
    extract::State,
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{
    AppState, Error,
    auth::CurrentReviewer,
    extract::{Path, Query},
    pages::{self, EventRowView, Header, render},
};
use crate::{
    audit,
    db::{self, audit::Filter},
    domain::authz::{self, ReviewerAction},
    domain::grants::GrantState,
    types::{count, format_ms, now_ms, parse_time},
};

const PAGE: i64 = 100;
const CHART_DAYS: usize = 30;
const DAY_MS: i64 = 86_400_000;

/// The filter form, as submitted (GET, so a filtered view can be bookmarked).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    pub(crate) since: String,
    #[serde(default)]
    pub(crate) until: String,
    #[serde(default)]
    pub(crate) model: String,
    #[serde(default)]
    pub(crate) researcher: String,
    #[serde(default)]
    pub(crate) grant: String,
    #[serde(default)]
    pub(crate) action: String,
    #[serde(default)]
    pub(crate) ip: String,
    #[serde(default)]
    pub(crate) outcome: String,
    pub(crate) before: Option<i64>,
}

fn set(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.chars().take(254).collect())
}

impl AuditQuery {
    /// The query string of these filters, for paging links.
    fn query_string(&self) -> String {
        let fields = [
            ("since", &self.since),
            ("until", &self.until),
            ("model", &self.model),
            ("researcher", &self.researcher),
            ("grant", &self.grant),
            ("action", &self.action),
            ("ip", &self.ip),
            ("outcome", &self.outcome),
        ];
        let mut out = url_encode_pairs(
            fields
                .iter()
                .filter(|(_, v)| !v.trim().is_empty())
                .map(|(k, v)| (*k, v.as_str())),
        );
        if !out.is_empty() {
            out.push('&');
        }
        out
    }
}

fn url_encode_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        serializer.append_pair(k, v);
    }
    serializer.finish()
}

/// A bar chart of completed transfers per day, drawn as SVG on the server.
fn chart_svg(counts: &[u64], first_day_ms: i64) -> String {
    const W: usize = 600;
    const H: usize = 120;
    const BOTTOM: usize = 20;
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let slot = W as f64 / counts.len().max(1) as f64;
    let last = format_ms(first_day_ms + (counts.len() as i64 - 1).max(0) * DAY_MS);
    // What the picture shows, for those who cannot see it.
    let label = format!(
        "Completed downloads per day from {} to {}: {} in all, at most {max} a day",
        &format_ms(first_day_ms)[..10],
        &last[..10],
        counts.iter().sum::<u64>(),
    );
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" role=\"img\" class=\"chart\" \
         aria-label=\"{label}\"><title>{label}</title>\
         <line x1=\"0\" y1=\"{y}\" x2=\"{W}\" y2=\"{y}\" stroke=\"#d8dde3\"/>",
        y = H - BOTTOM
    );
    for (i, &n) in counts.iter().enumerate() {
        let height = (n as f64 / max as f64) * (H - BOTTOM - 14) as f64;
        let x = i as f64 * slot + 1.0;
        let y = (H - BOTTOM) as f64 - height;
        let day = format_ms(first_day_ms + i as i64 * DAY_MS);
        svg.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{height:.1}\" fill=\"#1f5fbf\"><title>{d}: {n}</title></rect>",
            w = (slot - 2.0).max(1.0),
            d = &day[..10],
        ));
    }
    svg.push_str(&format!(
        "<text x=\"0\" y=\"{H}\" font-size=\"11\" fill=\"#5b6470\">{}</text>\
         <text x=\"{W}\" y=\"{H}\" font-size=\"11\" fill=\"#5b6470\" text-anchor=\"end\">{}</text>\
         <text x=\"0\" y=\"11\" font-size=\"11\" fill=\"#5b6470\">max {max}/day</text></svg>",
        &format_ms(first_day_ms)[..10],
        &last[..10],
    ));
    svg
}

pub(crate) async fn page(
    State(state): State<AppState>,
    token: Csrf,
    CurrentReviewer(reviewer): CurrentReviewer,
    Query(q): Query<AuditQuery>,
) -> Result<Response, Error> {
    authz::reviewer_may(&state.app, &reviewer, ReviewerAction::Administer).await?;
    let pool = state.app.db.pool();
    let time = |s: &str, what: &str| -> Result<Option<i64>, Error> {
        set(s)
            .map(|s| parse_time(&s).map_err(|e| Error::BadRequest(format!("{what}: {e}"))))
            .transpose()
    };
    let asked = audit::filter::Asked {
        since_ms: time(&q.since, "since")?,
        until_ms: time(&q.until, "until")?,
        model: Some(q.model.clone()),
        researcher: Some(q.researcher.clone()),
        grant: Some(q.grant.clone()),
        action: Some(q.action.clone()),
        ip: Some(q.ip.clone()),
        outcome: Some(q.outcome.clone()),
    };
    let filter = match asked.resolve(pool).await {
        Ok(filter) => Filter {
            before_seq: q.before,
            limit: PAGE,
            ..filter
        },
        Err(audit::filter::FilterError::Database(e)) => return Err(e.into()),
        Err(audit::filter::FilterError::Backwards) => {
            return Err(Error::BadRequest("since must be earlier than until".into()));
        }
        Err(refused) => return Err(Error::BadRequest(refused.to_string())),
    };
    let mut events = db::audit::list(pool, &filter).await?;
    events.reverse();
    let older = (events.len() as i64 == PAGE)
        .then(|| {
            events
                .last()
                .map(|e| format!("?{}before={}", q.query_string(), e.seq))
        })
        .flatten();

    let daily = audit::report::daily_deliveries(&state.app.db, CHART_DAYS, now_ms()).await?;
    let charts = daily
        .per_model
        .into_iter()
        .map(|(slug, counts)| pages::ModelChart {
            total: count(counts.iter().sum(), "completed transfer"),
            svg: chart_svg(&counts, daily.first_day_ms),
            slug,
        })
        .collect();

    let page = pages::AuditPage {
        header: Header::new(&reviewer, &token)?,
        events: events.iter().map(EventRowView::from).collect(),
        older,
        archived: db::archives::newest(pool)
            .await?
            .map(|a| (a.last_seq, format_ms(a.last_at))),
        charts,
        since: q.since,
        until: q.until,
        model: q.model,
        researcher: q.researcher,
        grant: q.grant,
        action: q.action,
        ip: q.ip,
        outcome: q.outcome,
    };
    Ok((token, render(&page)?).into_response())
}

/// One grant: who, what, until when, and everything that happened under it.
pub(crate) async fn grant(
    State(state): State<AppState>,
    token: Csrf,
    CurrentReviewer(reviewer): CurrentReviewer,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let pool = state.app.db.pool();
    let grant = db::grants::find_view(pool, &id).await?.ok_or(Error::NotFound)?;
    authz::reviewer_may(
        &state.app,
        &reviewer,
        ReviewerAction::Read {
            model_id: &grant.model_id,
        },
    )
    .await?;
    let history = db::audit::list(
        pool,
        &Filter {
            grant_id: Some(grant.id.clone()),
            limit: 1000,
            ..Default::default()
        },
    )
    .await?;
    let policy_approvals = db::policy::find(pool, &grant.model_id)
        .await?
        .map_or(1, |p| p.approvals_needed);
    let access_urls = crate::domain::access_urls::of_grant(&state.app, &grant)
        .await?
        .into_iter()
        .map(pages::AccessUrlRow::from)
        .collect();
    let page = pages::GrantPage {
        header: Header::new(&reviewer, &token)?,
        access_urls,
        state: GrantState::of(&grant, now_ms()),
        created: format_ms(grant.created_at),
        expires: format_ms(grant.expires_at),
        revoked_reason: grant.revoked_reason.clone().unwrap_or_default(),
        id: grant.id,
        email: grant.email,
        model: grant.model_slug,
        events: history.iter().map(EventRowView::from).collect(),
        default_days: crate::domain::reviews::default_extension_days(&state.app),
        max_days: crate::domain::reviews::MAX_EXTENSION_DAYS,
        policy_approvals,
    };
    Ok((token, render(&page)?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_has_a_bar_per_day_scaled_to_the_busiest() {
        let svg = chart_svg(&[0, 2, 4], 0);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains("1970-01-03: 4"));
        assert!(svg.contains("max 4/day"));
        assert!(svg.contains(
            "aria-label=\"Completed downloads per day from 1970-01-01 to 1970-01-03: 6 in all, at most 4 a day\""
        ));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
