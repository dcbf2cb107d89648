//! The audit commands against a remote portal: `--url` and `--token` (or
//! `WEIGHTGATE_URL` and `WEIGHTGATE_TOKEN`) instead of the database. They
//! read the API with a token of the `audit` scope and print what the local
//! commands print. `audit verify` fetches the events and the signed
//! checkpoints and checks the chain here, on the auditor's machine, against
//! a checkpoint key the auditor already trusts: the portal is not asked
//! whether its log is whole.

use std::{collections::HashMap, io::Write, path::PathBuf, time::Duration};

use anyhow::Context;
use serde::de::DeserializeOwned;

use super::{
    audit::{self, AuditCommand, FilterArgs, OutcomeArg},
    output::{self, Listing},
};
use crate::{
    audit::{
        checkpoint::{self, ExportedCheckpoint},
        event_hash,
        report::{Anomaly, DownloadSummary, Holder},
    },
    db::audit::EventRow,
    types::{format_ms, format_ms_rfc3339},
    web::api_json::{AnomalyJson, CheckpointJson, DownloadJson, EventPage, HolderJson},
};

/// A portal's API, with a token.
pub(crate) struct Remote {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Remote {
    pub(crate) fn new(url: &str, token: &str) -> anyhow::Result<Self> {
        crate::client::install_crypto();
        let base = url.trim().trim_end_matches('/').to_owned();
        anyhow::ensure!(
            base.starts_with("https://") || base.starts_with("http://"),
            "--url is the portal's address, e.g. https://weights.lab.example.org"
        );
        let http = reqwest::Client::builder()
            .user_agent(concat!("weightgate-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(300))
            .build()?;
        Ok(Self {
            http,
            base,
            token: token.trim().to_owned(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<T> {
        let mut url = url::Url::parse(&format!("{}{path}", self.base)).context("--url")?;
        url.query_pairs_mut().extend_pairs(query);
        let response = self
            .http
            .get(url.clone())
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        answer(response, url.as_str()).await
    }
}

/// The body of a successful answer, or the portal's message as the error.
async fn answer<T: DeserializeOwned>(response: reqwest::Response, url: &str) -> anyhow::Result<T> {
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let message = body["message"].as_str().unwrap_or("no explanation given");
        anyhow::bail!("the portal answered {status}: {message}");
    }
    response
        .json()
        .await
        .with_context(|| format!("{url} did not answer what this version reads"))
}

fn filter_query(filter: &FilterArgs) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(ms) = filter.since {
        q.push(("since", format_ms_rfc3339(ms)));
    }
    if let Some(ms) = filter.until {
        q.push(("until", format_ms_rfc3339(ms)));
    }
    for (name, value) in [
        ("model", &filter.model),
        ("researcher", &filter.researcher),
        ("grant", &filter.grant),
        ("action", &filter.action),
        ("ip", &filter.ip),
    ] {
        if let Some(v) = value {
            q.push((name, v.clone()));
        }
    }
    if let Some(o) = filter.outcome {
        q.push((
            "outcome",
            match o {
                OutcomeArg::Ok => "ok",
                OutcomeArg::Refused => "refused",
                OutcomeArg::Aborted => "aborted",
            }
            .into(),
        ));
    }
    q
}

/// The most events one request asks for.
const PAGE: i64 = 1000;

impl Remote {
    async fn post<T: DeserializeOwned>(&self, path: &str, body: serde_json::Value) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        // One key for the request and its retry: when the answer to the
        // first is lost, the portal answers the retry without doing it again.
        let key = format!("cli-{}", crate::types::new_token());
        let send = || {
            self.http
                .post(&url)
                .bearer_auth(&self.token)
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
        };
        let mut response = match send().await {
            Ok(response) => response,
            // Lost on the way: once more, with the same key.
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                send()
                    .await
                    .with_context(|| format!("cannot reach {}", self.base))?
            }
        };
        // The first of the two still running: the portal says when to ask
        // again (a conflict without Retry-After is a refusal, not a wait).
        for _ in 0..30 {
            if response.status() != reqwest::StatusCode::CONFLICT
                || !response.headers().contains_key(reqwest::header::RETRY_AFTER)
            {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            response = send()
                .await
                .with_context(|| format!("cannot reach {}", self.base))?;
        }
        answer(response, &url).await
    }
}

/// An RFC 3339 time of the API in Unix milliseconds.
fn ms_of(time: &serde_json::Value) -> anyhow::Result<i64> {
    let text = time.as_str().context("the portal sent a time that is not text")?;
    crate::types::parse_time(text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The grant commands against the portal, with a token of the `review`
/// scope (`admin` too for `extend`, which overrides the model's policy as
/// the local command does).
pub(crate) async fn grant(remote: Remote, cmd: super::GrantCommand) -> anyhow::Result<()> {
    use super::GrantCommand;
    match cmd {
        GrantCommand::List { format } => {
            let mut rows = Vec::new();
            loop {
                let page: serde_json::Value = remote
                    .get(
                        "/api/v1/grants",
                        &[("limit", "500".into()), ("offset", rows.len().to_string())],
                    )
                    .await?;
                let grants = page["grants"].as_array().cloned().unwrap_or_default();
                for g in &grants {
                    rows.push(super::GrantLine {
                        id: g["id"].as_str().unwrap_or_default().to_owned(),
                        researcher: g["email"].as_str().unwrap_or_default().to_owned(),
                        model: g["model"].as_str().unwrap_or_default().to_owned(),
                        created_at: ms_of(&g["created_at"])?,
                        expires_at: ms_of(&g["expires_at"])?,
                        state: g["state"].as_str().unwrap_or_default().to_owned(),
                        revoked_reason: g["revoked_reason"].as_str().map(str::to_owned),
                    });
                }
                if grants.len() < 500 {
                    break;
                }
            }
            super::print_grants(&rows, format);
        }
        GrantCommand::Extend { id, days } => {
            let answer: serde_json::Value = remote
                .post(
                    &format!("/api/v1/grants/{id}/extend"),
                    serde_json::json!({"days": days, "override": true}),
                )
                .await?;
            let g = &answer["grant"];
            println!(
                "grant {} of {} for {} now ends {} UTC",
                g["id"].as_str().unwrap_or_default(),
                g["email"].as_str().unwrap_or_default(),
                g["model"].as_str().unwrap_or_default(),
                format_ms(ms_of(&g["expires_at"])?)
            );
        }
        GrantCommand::Revoke { id, reason } => {
            let g: serde_json::Value = remote
                .post(
                    &format!("/api/v1/grants/{id}/revoke"),
                    serde_json::json!({"reason": reason}),
                )
                .await?;
            println!(
                "revoked grant {} of {} for {}",
                g["id"].as_str().unwrap_or_default(),
                g["email"].as_str().unwrap_or_default(),
                g["model"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Runs an audit command against the portal.
pub(crate) async fn run(remote: Remote, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::List {
            filter,
            format,
            limit,
            after,
            before,
        } => list(&remote, &filter, format, limit, after, before).await,
        AuditCommand::Downloads { model, format } => {
            let mut q = Vec::new();
            if let Some(m) = model {
                q.push(("model", m));
            }
            let rows: Vec<DownloadJson> = remote.get("/api/v1/audit/downloads", &q).await?;
            let rows: Vec<DownloadSummary> = rows.into_iter().map(DownloadSummary::from).collect();
            audit::print_downloads(&rows, format);
            Ok(())
        }
        AuditCommand::WhoHas {
            model,
            release,
            format,
        } => {
            let mut q = vec![("model", model)];
            if let Some(r) = release {
                q.push(("release", r));
            }
            let rows: Vec<HolderJson> = remote.get("/api/v1/audit/who-has", &q).await?;
            let rows: Vec<Holder> = rows.into_iter().map(Holder::from).collect();
            audit::print_holders(&rows, format);
            Ok(())
        }
        AuditCommand::Anomalies {
            since,
            max_addresses,
            burst,
            window,
            revoked_fetches,
            bad_signatures,
            failed_sign_ins,
            access_url_networks,
            format,
        } => {
            let mut q = vec![
                ("max_addresses", max_addresses.to_string()),
                ("burst", burst.to_string()),
                ("window_seconds", window.as_secs().max(1).to_string()),
                ("revoked_fetches", revoked_fetches.to_string()),
                ("bad_signatures", bad_signatures.to_string()),
                ("failed_sign_ins", failed_sign_ins.to_string()),
            ];
            if let Some(ms) = since {
                q.push(("since", format_ms_rfc3339(ms)));
            }
            if let Some(n) = access_url_networks {
                q.push(("access_url_networks", n.to_string()));
            }
            let found: Vec<AnomalyJson> = remote.get("/api/v1/audit/anomalies", &q).await?;
            let found: Vec<Anomaly> = found
                .into_iter()
                .map(Anomaly::try_from)
                .collect::<anyhow::Result<_>>()?;
            // The archive's note needs the archive's end: one event's page says it.
            let page: EventPage = remote
                .get("/api/v1/audit/events", &[("limit", "1".into())])
                .await?;
            let archived = page.archived_through_at.map(|at| (page.archived_through, at));
            audit::print_anomalies(&found, since.unwrap_or(i64::MIN), archived, format);
            Ok(())
        }
        AuditCommand::Verify {
            checkpoint,
            public_key,
            full: _,
            archive,
        } => {
            anyhow::ensure!(
                !archive,
                "--archive reads the object store, which only the portal's own machine can; run it there"
            );
            verify(&remote, checkpoint, &public_key).await
        }
        _ => anyhow::bail!(
            "this command needs the database; against a portal (--url) weightgate runs audit list, downloads, \
             who-has, anomalies and verify"
        ),
    }
}

async fn list(
    remote: &Remote,
    filter: &FilterArgs,
    listing: Listing,
    limit: i64,
    after: Option<i64>,
    before: Option<i64>,
) -> anyhow::Result<()> {
    let mut events: Vec<EventRow> = Vec::new();
    let mut archived = None;
    let asked_after = after;
    let (mut after, mut before) = (after, before);
    // The API gives at most a thousand at a time; the command asks for
    // `limit`, paging on as the local command's one query would.
    while (events.len() as i64) < limit {
        let mut q = filter_query(filter);
        q.push(("limit", (limit - events.len() as i64).min(PAGE).to_string()));
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        if let Some(b) = before {
            q.push(("before", b.to_string()));
        }
        let page: EventPage = remote.get("/api/v1/audit/events", &q).await?;
        archived = page.archived_through_at.map(|at| (page.archived_through, at));
        let got = page.events.len() as i64;
        let rows: Vec<EventRow> = page.events.into_iter().map(EventRow::from).collect();
        match (after, rows.last()) {
            (Some(_), Some(last)) => after = Some(last.seq),
            (None, Some(last)) => before = Some(last.seq),
            _ => {}
        }
        events.extend(rows);
        if got < PAGE.min(limit) {
            break;
        }
    }
    audit::print_list(&events, listing, limit, asked_after, archived)
}

/// Checks the chain on this machine: every event's hash and its link to the
/// one before, and every checkpoint signed by a key the auditor trusts
/// against the event it names.
async fn verify(remote: &Remote, checkpoint: Option<PathBuf>, public_keys: &[String]) -> anyhow::Result<()> {
    let exported = match &checkpoint {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(ExportedCheckpoint::parse(&text).with_context(|| format!("{}", path.display()))?)
        }
        None => None,
    };
    let mut trusted = HashMap::new();
    for key in public_keys {
        let public = checkpoint::parse_public_key(key).context("--public-key")?;
        trusted.insert(checkpoint::kid_of(&public), public);
    }
    if let Some(e) = &exported {
        anyhow::ensure!(
            e.signature_holds(),
            "the exported checkpoint's signature does not hold"
        );
        let public = e.public()?;
        trusted.insert(checkpoint::kid_of(&public), public);
    }
    anyhow::ensure!(
        !trusted.is_empty(),
        "against a portal, give the checkpoint key you trust: --public-key (the hex the portal's operator \
         handed you), or --checkpoint with a checkpoint you exported earlier"
    );

    // The checkpoints first: each one's event is then checked as the walk
    // passes it, so that memory holds one page of events at a time.
    let mut checkpoints: Vec<CheckpointJson> = Vec::new();
    loop {
        let mut q = vec![("limit", PAGE.to_string())];
        if let Some(last) = checkpoints.last() {
            q.push(("after_seq", last.seq.to_string()));
            q.push(("after_id", last.id.clone()));
        }
        let page: Vec<CheckpointJson> = remote.get("/api/v1/audit/checkpoints", &q).await?;
        let done = (page.len() as i64) < PAGE;
        checkpoints.extend(page);
        if done {
            break;
        }
    }
    let mut problems: Vec<String> = Vec::new();
    let mut to_check: HashMap<i64, Vec<&CheckpointJson>> = HashMap::new();
    let mut signed = 0;
    for c in &checkpoints {
        match trusted.get(&c.kid) {
            Some(public) if checkpoint::signature_holds(public, c.seq, &c.hash, c.at, &c.signature) => {
                signed += 1;
                to_check.entry(c.seq).or_default().push(c);
            }
            Some(_) => problems.push(format!("the checkpoint of event {} has a bad signature", c.seq)),
            None => {}
        }
    }
    let started = std::time::Instant::now();
    let mut after: Option<i64> = None;
    let mut prev: Option<(i64, String)> = None;
    let mut first_seq = None;
    let mut checked = 0i64;
    let mut archived_through;
    loop {
        let mut q = vec![("limit", PAGE.to_string())];
        q.push(("after", after.unwrap_or(0).to_string()));
        let page: EventPage = remote.get("/api/v1/audit/events", &q).await?;
        archived_through = page.archived_through;
        let n = page.events.len() as i64;
        for e in page.events {
            let row = EventRow::from(e);
            first_seq.get_or_insert(row.seq);
            if event_hash(&row) != row.hash {
                problems.push(format!(
                    "event {} was modified: its hash does not match its contents",
                    row.seq
                ));
            }
            match &prev {
                Some((seq, hash)) if row.seq != seq + 1 => {
                    problems.push(format!("events {} to {} are missing", seq + 1, row.seq - 1));
                    if &row.prev_hash != hash {
                        problems.push(format!("event {} does not link to the event before it", row.seq));
                    }
                }
                Some((_, hash)) if &row.prev_hash != hash => {
                    problems.push(format!("event {} does not link to the event before it", row.seq));
                }
                _ => {}
            }
            for c in to_check.remove(&row.seq).unwrap_or_default() {
                if c.hash != row.hash {
                    problems.push(format!(
                        "event {} is not the event its signed checkpoint of {} UTC names: the log was rewritten",
                        row.seq,
                        format_ms(c.at)
                    ));
                }
            }
            checked += 1;
            after = Some(row.seq);
            prev = Some((row.seq, row.hash));
        }
        if n < PAGE {
            break;
        }
    }
    let head = prev.as_ref().map_or(0, |(seq, _)| *seq);
    if first_seq.is_some_and(|first| first != archived_through + 1) {
        problems.push(format!(
            "the live log starts at event {}, but only events 1 to {archived_through} are archived",
            first_seq.unwrap_or(0)
        ));
    }
    for (seq, _) in to_check.iter().filter(|(seq, _)| **seq > archived_through) {
        problems.push(format!(
            "a signed checkpoint names event {seq}, which the log no longer holds (newest: {head}): the log was cut back"
        ));
    }
    if let Some(e) = &exported
        && e.seq > archived_through
        && !checkpoints.iter().any(|c| c.seq == e.seq && c.hash == e.hash)
        && e.seq > head
    {
        problems.push(format!(
            "the exported checkpoint names event {}, beyond the newest event {head}: the log was cut back",
            e.seq
        ));
    }
    if let Some((first, rest)) = problems.split_first() {
        let mut message = format!("audit log damaged (checked on this machine): {first}");
        for problem in rest {
            message.push_str(&format!("\n  also: {problem}"));
        }
        anyhow::bail!(message);
    }
    anyhow::ensure!(
        signed > 0,
        "the portal holds no checkpoint signed by a key you trust, so nothing proves these events are the \
         ones it had: ask its operator for the key, or for `weightgate audit checkpoint` to be run"
    );
    let took = started.elapsed().as_secs_f64();
    let mut out = String::new();
    use std::fmt::Write as _;
    writeln!(
        out,
        "audit log intact (checked on this machine): events {} to {head} re-hashed in {took:.1} s ({:.0} events/s)",
        archived_through + 1,
        checked as f64 / took.max(1e-6)
    )?;
    if archived_through > 0 {
        writeln!(
            out,
            "events 1 to {archived_through} are archived in the portal's object store, and not read from here"
        )?;
    }
    if let Some((seq, hash)) = &prev {
        writeln!(out, "newest event {seq}, hash {hash}")?;
    }
    writeln!(
        out,
        "{signed} checkpoint(s) signed by the key(s) you trust match the log (keys: {})",
        trusted.keys().cloned().collect::<Vec<_>>().join(", ")
    )?;
    output::until_closed(std::io::stdout().lock().write_all(out.as_bytes()))
}
