//! `weightgate audit`: read, check, sign and report on the audit log.

use std::{io::Write, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use super::output::{self, Format, Listing, Printer};
use crate::{
    app::App,
    audit::{
        self,
        checkpoint::{self, ExportedCheckpoint},
        report::{self, Thresholds},
    },
    db::{
        self, Db,
        audit::{EventRow, Filter},
    },
    types::{format_ms, format_ms_rfc3339, parse_time},
};

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// List events, oldest first: the newest --limit of those matching, or
    /// with --after the oldest --limit after an event.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        format: Listing,
        /// At most this many events.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
        /// Only events after this one (by sequence number), oldest first: the
        /// next page after the last event shown.
        #[arg(long)]
        after: Option<i64>,
        /// Only events before this one (by sequence number): the page before.
        #[arg(long)]
        before: Option<i64>,
    },
    /// Show the newest events, then (with --follow) new ones as they arrive.
    Tail {
        #[command(flatten)]
        filter: FilterArgs,
        /// How many of the newest events to show first.
        #[arg(short = 'n', long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(0..))]
        lines: i64,
        /// Keep watching for new events.
        #[arg(short, long)]
        follow: bool,
        /// How often to look for new events with --follow.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        every: Duration,
        /// `table` prints one aligned line per event.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Recompute the hash chain and check every signed checkpoint, in the
    /// database and in the witness, with the keys this portal trusts; names
    /// the first thing that does not hold and exits non-zero.
    Verify {
        /// Also check the log against a checkpoint exported earlier with
        /// `audit checkpoint --export` (or e-mailed to auditors).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Also trust this checkpoint public key (hex), say the one the lab
        /// published, where the portal's key file is not at hand.
        #[arg(long)]
        public_key: Vec<String>,
        /// Re-hash every event from the first. By default the events up to
        /// the newest checkpoint the witness holds (signed with a trusted
        /// key, its hash still in the log at its place) are taken as that
        /// checkpoint proved them when it was signed, and only the events
        /// after it are re-hashed.
        #[arg(long)]
        full: bool,
        /// Also read every archived segment back from the object store and
        /// re-hash its events (see `audit archive`).
        #[arg(long)]
        archive: bool,
    },
    /// Move the events older than a date out of the database, into
    /// compressed segments in the object store (the witness's), each ending
    /// at a checkpoint the witness holds, with a manifest. The report totals
    /// keep counting them; `verify --archive` and `export --archived` read
    /// them back.
    Archive {
        /// Archive events up to the newest witnessed checkpoint over an
        /// event before this time (same forms as `list --since`).
        #[arg(long, value_parser = parse_time)]
        before: i64,
        /// Events per segment, at least: a segment ends at the first
        /// witnessed checkpoint after this many.
        #[arg(long, default_value_t = audit::archive::SEGMENT_EVENTS, value_parser = clap::value_parser!(i64).range(1..))]
        segment_events: i64,
    },
    /// Print the public half of the audit checkpoint key, and its id.
    PublicKey,
    /// Sign the log's current head with the portal's audit key, after
    /// checking the events since the last checkpoint.
    Checkpoint {
        /// Also write the checkpoint, with its public key, to this file: keep
        /// it away from this server.
        #[arg(long)]
        export: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Per researcher and model: files delivered whole, bytes sent, first and
    /// last fetch, client addresses.
    Downloads {
        /// Only this model (its slug).
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        format: Listing,
    },
    /// Researchers holding a complete copy of a release: every file delivered
    /// whole, possibly over several resumed or ranged transfers.
    WhoHas {
        /// The model's slug.
        model: String,
        /// Only this release; by default every published release.
        #[arg(long)]
        release: Option<String>,
        #[command(flatten)]
        format: Listing,
    },
    /// Flag patterns worth a look: grants used from many addresses, bursts of
    /// fetches, fetches after revocation, repeated bad links or sign-ins,
    /// access URLs used from many networks.
    Anomalies {
        /// Only events at or after this time (same forms as `list --since`).
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        /// Flag a grant fetched from more distinct addresses than this.
        #[arg(long, default_value_t = 3)]
        max_addresses: i64,
        /// Flag a grant with this many fetches ...
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(2..))]
        burst: i64,
        /// ... within this long.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        window: Duration,
        /// Flag a revoked grant whose links were tried this many times since.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..))]
        revoked_fetches: i64,
        /// Flag an address that sent this many links with a bad signature.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..))]
        bad_signatures: i64,
        /// Flag an address with this many refused reviewer sign-ins.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..))]
        failed_sign_ins: i64,
        /// Flag an access URL used from more client networks than this
        /// (default: WEIGHTGATE_ACCESS_URL_MAX_NETWORKS).
        #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
        access_url_networks: Option<i64>,
        #[command(flatten)]
        format: Listing,
    },
    /// Empty the totals the download reports read and fold the whole log
    /// into them again. The reports keep them up to date by themselves; this
    /// is for after a restore, or to check that they are what the log says.
    RebuildReports,
    /// Write the whole log, every column, oldest first.
    Export {
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Begin with the archived events, read back from their segments
        /// (checked against their recorded size and SHA-256).
        #[arg(long)]
        archived: bool,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutcomeArg {
    Ok,
    Refused,
    Aborted,
}

/// Which events to show.
#[derive(Args, Debug, Default)]
pub(crate) struct FilterArgs {
    /// Only events at or after this time: a duration back from now (7d,
    /// 12h), a date (2026-11-01, UTC) or an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    pub(crate) since: Option<i64>,
    /// Only events before this time (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    pub(crate) until: Option<i64>,
    /// Only events about this model (its slug).
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Only events about this researcher (their e-mail).
    #[arg(long)]
    pub(crate) researcher: Option<String>,
    /// Only events of this grant.
    #[arg(long)]
    pub(crate) grant: Option<String>,
    /// Only events of this action, e.g. file.fetch.
    #[arg(long)]
    pub(crate) action: Option<String>,
    /// Only events from this client address.
    #[arg(long)]
    pub(crate) ip: Option<String>,
    /// Only events with this outcome.
    #[arg(long, value_enum)]
    pub(crate) outcome: Option<OutcomeArg>,
}

impl FilterArgs {
    /// The database filter, checked and looked up as the dashboard's is.
    async fn resolve(self, db: &Db) -> anyhow::Result<Filter> {
        let asked = audit::filter::Asked {
            since_ms: self.since,
            until_ms: self.until,
            model: self.model,
            researcher: self.researcher,
            grant: self.grant,
            action: self.action,
            ip: self.ip,
            outcome: self.outcome.map(|o| {
                match o {
                    OutcomeArg::Ok => "ok",
                    OutcomeArg::Refused => "refused",
                    OutcomeArg::Aborted => "aborted",
                }
                .to_owned()
            }),
        };
        match asked.resolve(db.pool()).await {
            Err(audit::filter::FilterError::Backwards) => {
                anyhow::bail!("--since must be earlier than --until")
            }
            resolved => Ok(resolved?),
        }
    }
}

/// Every column of an event, as `export` and CSV listings write them.
const EVENT_FIELDS: &[&str] = &[
    "seq",
    "at",
    "time",
    "action",
    "outcome",
    "reason",
    "actor",
    "subject",
    "model_id",
    "application_id",
    "grant_id",
    "researcher_id",
    "file_id",
    "range_start",
    "range_end",
    "bytes",
    "client_ip",
    "user_agent",
    "request_id",
    "prev_hash",
    "hash",
    "occurrences",
];

const EVENT_TABLE: &[&str] = &[
    "seq",
    "time (UTC)",
    "action",
    "outcome",
    "actor",
    "subject",
    "grant",
    "range",
    "bytes",
    "client",
    "user agent",
];

fn event_headers(format: Format) -> &'static [&'static str] {
    match format {
        Format::Table => EVENT_TABLE,
        Format::Jsonl | Format::Csv => EVENT_FIELDS,
    }
}

fn event_json(e: &EventRow) -> serde_json::Value {
    let mut json = serde_json::to_value(e).unwrap_or_default();
    json["time"] = format_ms_rfc3339(e.at).into();
    json
}

fn event_cells(format: Format, e: &EventRow) -> Vec<String> {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let int = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    match format {
        Format::Table => vec![
            e.seq.to_string(),
            format_ms(e.at),
            e.action.clone(),
            // "refused: grant_revoked ×3": the reason beside the outcome it
            // explains, so that a narrow table keeps both.
            {
                let mut outcome = e.outcome.clone();
                if let Some(reason) = e.reason.as_deref().filter(|r| !r.is_empty()) {
                    outcome = format!("{outcome}: {reason}");
                }
                match e.occurrences {
                    Some(n) => format!("{outcome} ×{n}"),
                    None => outcome,
                }
            },
            text(&e.actor),
            text(&e.subject),
            text(&e.grant_id),
            match (e.range_start, e.range_end) {
                (Some(s), Some(t)) => format!("{s}-{t}"),
                _ => String::new(),
            },
            int(e.bytes),
            text(&e.client_ip),
            text(&e.user_agent).chars().take(40).collect(),
        ],
        Format::Jsonl | Format::Csv => vec![
            e.seq.to_string(),
            e.at.to_string(),
            format_ms_rfc3339(e.at),
            e.action.clone(),
            e.outcome.clone(),
            text(&e.reason),
            text(&e.actor),
            text(&e.subject),
            text(&e.model_id),
            text(&e.application_id),
            text(&e.grant_id),
            text(&e.researcher_id),
            text(&e.file_id),
            int(e.range_start),
            int(e.range_end),
            int(e.bytes),
            text(&e.client_ip),
            text(&e.user_agent),
            text(&e.request_id),
            e.prev_hash.clone(),
            e.hash.clone(),
            int(e.occurrences),
        ],
    }
}

/// One aligned line per event, for following the log, with control
/// characters escaped.
fn event_line(e: &EventRow) -> String {
    output::for_terminal(&event_text(e)).into_owned()
}

fn event_text(e: &EventRow) -> String {
    let outcome = match e.occurrences {
        Some(n) => format!("{} ×{n}", e.outcome),
        None => e.outcome.clone(),
    };
    let mut line = format!(
        "{}  {:>8}  {:<22} {:<8}",
        format_ms(e.at),
        e.seq,
        e.action,
        outcome
    );
    for part in [&e.reason, &e.subject, &e.client_ip].into_iter().flatten() {
        line.push_str("  ");
        line.push_str(part);
    }
    if let (Some(s), Some(t)) = (e.range_start, e.range_end) {
        line.push_str(&format!("  bytes {s}-{t}"));
    }
    if let Some(b) = e.bytes {
        line.push_str(&format!("  sent {b}"));
    }
    line
}

fn time_cell(ms: Option<i64>) -> String {
    ms.map(format_ms).unwrap_or_default()
}

fn time_json(ms: Option<i64>) -> serde_json::Value {
    ms.map_or(serde_json::Value::Null, |ms| format_ms_rfc3339(ms).into())
}

pub(crate) async fn run(app: Arc<App>, cmd: AuditCommand) -> anyhow::Result<()> {
    let db = &app.db;
    match cmd {
        AuditCommand::List {
            filter,
            format,
            limit,
            after,
            before,
        } => list(db, filter, format, limit, after, before).await,
        AuditCommand::Tail {
            filter,
            lines,
            follow,
            every,
            format,
        } => tail(db, filter, lines, follow.then_some(every), format).await,
        AuditCommand::Verify {
            checkpoint,
            public_key,
            full,
            archive,
        } => {
            let start = if full {
                audit::Start::Full
            } else {
                audit::Start::Witnessed
            };
            verify(&app, checkpoint, &public_key, start, archive).await
        }
        AuditCommand::Archive {
            before,
            segment_events,
        } => archive(&app, before, segment_events).await,
        AuditCommand::Checkpoint { export, format } => sign_checkpoint(&app, export, format).await,
        AuditCommand::PublicKey => {
            let key = checkpoint::AuditKey::configured(&app.config)?.context(
                "no audit checkpoint key here: set WEIGHTGATE_AUDIT_KEY_FILE (or WEIGHTGATE_AUDIT_KEY)",
            )?;
            println!("{}  {}", hex::encode(key.public_key().as_bytes()), key.kid);
            Ok(())
        }
        AuditCommand::Downloads { model, format } => downloads(db, model, format).await,
        AuditCommand::WhoHas {
            model,
            release,
            format,
        } => who_has(db, &model, release.as_deref(), format).await,
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
            let thresholds = Thresholds {
                since_ms: since.unwrap_or(i64::MIN),
                max_addresses,
                burst_fetches: burst,
                burst_window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
                revoked_fetches,
                bad_signatures,
                failed_sign_ins,
                access_url_networks: access_url_networks
                    .unwrap_or_else(|| i64::from(app.config.access_url_max_networks)),
            };
            anomalies(db, &thresholds, format).await
        }
        AuditCommand::RebuildReports => {
            let started = std::time::Instant::now();
            let done = report::rebuild(db, &app.audit_archive(), &app.audit_trust()?).await?;
            println!(
                "folded {} events into the report totals in {:.1} s",
                done.folded,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        AuditCommand::Export {
            format,
            archived,
            output,
        } => export(&app, format, archived, output).await,
    }
}

async fn list(
    db: &Db,
    filter: FilterArgs,
    listing: Listing,
    limit: i64,
    after: Option<i64>,
    before: Option<i64>,
) -> anyhow::Result<()> {
    let mut filter = filter.resolve(db).await?;
    filter.limit = limit;
    filter.after_seq = after;
    filter.before_seq = before;
    let events = db::audit::list(db.pool(), &filter).await?;
    let archived = db::archives::newest(db.pool())
        .await?
        .map(|a| (a.last_seq, a.last_at));
    print_list(&events, listing, limit, after, archived)
}

/// Prints a page of events as `audit list` does, locally or from a portal;
/// `archived` is the last archived event's position and time.
pub(super) fn print_list(
    events: &[EventRow],
    listing: Listing,
    limit: i64,
    after: Option<i64>,
    archived: Option<(i64, i64)>,
) -> anyhow::Result<()> {
    let format = listing.kind;
    // Fitting a terminal, what goes first is what the other columns or a
    // `--grant` query already say; seq, time, action, outcome (with its
    // reason) and subject stay, the last two wrapping.
    let mut out = Printer::stdout(listing, event_headers(format))?
        .optional(&["user agent", "grant", "client", "range", "actor", "bytes"])
        .unbroken(&["seq", "time (UTC)", "action"]);
    let printed = events
        .iter()
        .try_for_each(|e| out.row(event_cells(format, e), &event_json(e)))
        .and_then(|()| out.finish());
    output::until_closed(printed)?;
    if format == Format::Table
        && let Some((last_seq, last_at)) = archived
        && events.first().is_none_or(|e| e.seq > last_seq)
    {
        eprintln!(
            "events 1 to {last_seq} (to {} UTC) are archived, and not listed: `weightgate audit export --archived` \
             reads them back",
            format_ms(last_at)
        );
    }
    if format == Format::Table && events.len() as i64 == limit {
        match (after, events.first(), events.last()) {
            (Some(_), _, Some(last)) => eprintln!("more events may follow: add --after {}", last.seq),
            (None, Some(first), _) => eprintln!("older events may precede: add --before {}", first.seq),
            _ => {}
        }
    }
    Ok(())
}

async fn tail(
    db: &Db,
    filter: FilterArgs,
    lines: i64,
    follow: Option<Duration>,
    format: Format,
) -> anyhow::Result<()> {
    let mut filter = filter.resolve(db).await?;
    let head = db::audit::head(db.pool()).await?.map_or(0, |h| h.0);
    filter.limit = lines;
    let newest = if lines > 0 {
        db::audit::list(db.pool(), &filter).await?
    } else {
        Vec::new()
    };
    let mut out: Option<Printer> = match format {
        Format::Table => None,
        other => Some(Printer::stdout(other, event_headers(other))?),
    };
    let mut lines_out = std::io::BufWriter::new(std::io::stdout());
    let mut emit = |events: &[EventRow]| -> std::io::Result<()> {
        match &mut out {
            Some(printer) => {
                for e in events {
                    printer.row(event_cells(format, e), &event_json(e))?;
                }
                printer.flush()
            }
            None => {
                for e in events {
                    writeln!(lines_out, "{}", event_line(e))?;
                }
                lines_out.flush()
            }
        }
    };
    output::until_closed(emit(&newest))?;
    let Some(every) = follow else {
        return Ok(());
    };
    // Events become visible in sequence order, so once a page comes back
    // short, everything up to the head read before it has been seen.
    let mut seen = newest.last().map_or(head, |e| e.seq.max(head));
    filter.limit = 1000;
    loop {
        let head = db::audit::head(db.pool()).await?.map_or(0, |h| h.0);
        filter.after_seq = Some(seen);
        let events = db::audit::list(db.pool(), &filter).await?;
        if let Err(err) = emit(&events) {
            return output::until_closed(Err(err));
        }
        let full = events.len() as i64 == filter.limit;
        seen = match events.last() {
            Some(last) if full => last.seq,
            Some(last) => last.seq.max(head),
            None => seen.max(head),
        };
        if !full {
            tokio::time::sleep(every).await;
        }
    }
}

async fn verify(
    app: &App,
    checkpoint: Option<PathBuf>,
    public_keys: &[String],
    start: audit::Start,
    read_archive: bool,
) -> anyhow::Result<()> {
    let exported = match &checkpoint {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(ExportedCheckpoint::parse(&text).with_context(|| format!("{}", path.display()))?)
        }
        None => None,
    };
    let mut trust = app.audit_trust()?;
    for key in public_keys {
        trust.add(checkpoint::parse_public_key(key).context("--public-key")?);
    }
    anyhow::ensure!(
        !trust.is_empty(),
        "no checkpoint key to trust: give the portal's WEIGHTGATE_AUDIT_KEY_FILE (or WEIGHTGATE_AUDIT_KEY), \
         or its public key with --public-key"
    );
    let witnessed = app.witness.read().await?;
    let started = std::time::Instant::now();
    let mut v = audit::verify_from(
        &app.db,
        &app.audit_archive(),
        &trust,
        &witnessed,
        exported.as_ref(),
        start,
    )
    .await?;
    let took = started.elapsed().as_secs_f64();
    let archive_read = if read_archive {
        let started = std::time::Instant::now();
        let checked = audit::archive::check(&app.db, &app.audit_archive(), &trust, &witnessed).await?;
        let took = started.elapsed().as_secs_f64();
        let first = checked.end.0 + 1;
        v.problems
            .extend(checked.problems.iter().map(|what| audit::Problem::Archive {
                first,
                what: what.clone(),
            }));
        if checked.problems.is_empty() && checked.end.0 != v.archived_through {
            v.problems.push(audit::Problem::Archive {
                first,
                what: format!(
                    "the archived segments end at event {}, but the live log goes on from event {}",
                    checked.end.0, v.archived_through
                ),
            });
        }
        v.problems.sort_by_key(audit::Problem::position);
        Some((checked, took))
    } else {
        None
    };
    if let Some((first, rest)) = v.problems.split_first() {
        let mut message = format!("audit log damaged: {first}");
        for problem in rest {
            message.push_str(&format!("\n  also: {problem}"));
        }
        anyhow::bail!(message);
    }
    // Written at once at the end.
    use std::fmt::Write as _;
    let mut out = String::new();
    match &v.started_from {
        None if v.archived_through > 0 => writeln!(
            out,
            "audit log intact: {} events, chain verified; events {} to {} re-hashed in {took:.1} s \
             ({:.0} events/s), going on from the archived events",
            v.archived_through + v.events,
            v.archived_through + 1,
            v.archived_through + v.events,
            v.events as f64 / took.max(1e-6)
        )?,
        None => writeln!(
            out,
            "audit log intact: {} events, chain verified (re-hashed in {took:.1} s, {:.0} events/s)",
            v.events,
            v.events as f64 / took.max(1e-6)
        )?,
        Some(s) => writeln!(
            out,
            "audit log intact: {} events, chain verified; events 1 to {} as proved by the checkpoint the witness \
             holds ({}, signed {} UTC with key {}), the {} after it re-hashed in {took:.1} s; `--full` re-hashes all",
            s.seq + v.events,
            s.seq,
            s.place,
            format_ms(s.at),
            s.kid,
            v.events
        )?,
    }
    match &archive_read {
        Some((checked, _)) if checked.segments == 0 => writeln!(out, "no events are archived")?,
        Some((checked, took)) => writeln!(
            out,
            "events 1 to {} archived in {} segment(s), read back and re-hashed in {took:.1} s: every one \
             matches its manifest and chains on into the live log",
            checked.end.0, checked.segments
        )?,
        None if v.archived_through > 0 => writeln!(
            out,
            "events 1 to {} archived in {} segment(s), ending at a checkpoint the witness holds; not read \
             back: `--archive` re-hashes them too",
            v.archived_through, v.archived_segments
        )?,
        None => {}
    }
    if let Some((seq, hash)) = &v.head {
        // Noted down elsewhere, this line shows later whether the log was
        // cut back or rewritten.
        writeln!(out, "newest event {seq}, hash {hash}")?;
    }
    match &v.latest_checkpoint {
        Some(c) => writeln!(
            out,
            "{} checkpoint(s) verified; the newest signs event {} at {} UTC (key {})",
            v.checkpoints,
            c.seq,
            format_ms(c.at),
            c.kid
        )?,
        None => writeln!(
            out,
            "no signed checkpoints yet: `weightgate audit checkpoint` makes one"
        )?,
    }
    writeln!(
        out,
        "{} checkpoint(s) held by the witness match the log (trusted keys: {})",
        v.witnessed,
        trust.kids().join(", ")
    )?;
    if let Some(e) = &exported {
        writeln!(
            out,
            "the exported checkpoint of event {} ({} UTC, key {}) matches",
            e.seq,
            format_ms(e.at),
            e.kid
        )?;
    }
    // A reader that went away (`… | head -1`) ends the output, not the command.
    output::until_closed(std::io::stdout().lock().write_all(out.as_bytes()))
}

async fn archive(app: &App, before: i64, segment_events: i64) -> anyhow::Result<()> {
    let trust = app.audit_trust()?;
    anyhow::ensure!(
        !trust.is_empty(),
        "no checkpoint key to trust: archiving needs the portal's WEIGHTGATE_AUDIT_KEY_FILE (or \
         WEIGHTGATE_AUDIT_KEY), whose checkpoints end the segments"
    );
    let witnessed = app.witness.read().await?;
    let started = std::time::Instant::now();
    let print = |s: &db::archives::ArchiveRow| {
        println!(
            "archived events {} to {} ({} events, {} UTC to {} UTC) to {} ({} bytes, sha256 {})",
            s.first_seq,
            s.last_seq,
            s.events,
            format_ms(s.first_at),
            format_ms(s.last_at),
            s.object,
            s.size,
            s.sha256
        );
    };
    let done = audit::archive::archive(
        &app.db,
        &app.audit_archive(),
        &trust,
        &witnessed,
        before,
        segment_events,
        &print,
    )
    .await?;
    let took = started.elapsed().as_secs_f64();
    if done.left_over > 0 {
        println!(
            "removed {} events an interrupted run had archived but left in the database",
            done.left_over
        );
    }
    if let Some(why) = &done.nothing {
        println!("{why}");
    }
    if !done.segments.is_empty() {
        let events: i64 = done.segments.iter().map(|s| s.events).sum();
        println!(
            "{events} events in {} segment(s) in {took:.1} s; {} removed from the database",
            done.segments.len(),
            done.removed
        );
    }
    Ok(())
}

async fn sign_checkpoint(app: &App, export: Option<PathBuf>, format: Format) -> anyhow::Result<()> {
    anyhow::ensure!(
        checkpoint::AuditKey::configured(&app.config)?.is_some(),
        "no audit checkpoint key here: set WEIGHTGATE_AUDIT_KEY_FILE (or WEIGHTGATE_AUDIT_KEY) to the portal's key"
    );
    let done = app.checkpoint().await?;
    let exported = done.exported();
    if let Some(path) = &export {
        let json = serde_json::to_string_pretty(&exported)? + "\n";
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let c = &done.checkpoint;
    match format {
        Format::Table => {
            println!(
                "{} checkpoint of event {}, hash {}",
                if done.new { "signed" } else { "already signed:" },
                c.seq,
                c.hash
            );
            println!(
                "signed at {} UTC with key {} (public key {})",
                format_ms(c.at),
                c.kid,
                exported.public_key
            );
            if let Some(path) = &export {
                println!(
                    "exported to {}: keep a copy away from this server and check the log against it with \
                     `weightgate audit verify --checkpoint FILE`",
                    path.display()
                );
            }
        }
        Format::Jsonl | Format::Csv => {
            let mut out = Printer::stdout(
                format,
                &[
                    "format",
                    "seq",
                    "hash",
                    "at",
                    "time",
                    "kid",
                    "public_key",
                    "signature",
                ],
            )?;
            let cells = vec![
                exported.format.clone(),
                exported.seq.to_string(),
                exported.hash.clone(),
                exported.at.to_string(),
                exported.time.clone(),
                exported.kid.clone(),
                exported.public_key.clone(),
                exported.signature.clone(),
            ];
            output::until_closed(
                out.row(cells, &serde_json::to_value(&exported)?)
                    .and_then(|()| out.finish()),
            )?;
        }
    }
    Ok(())
}

async fn downloads(db: &Db, model: Option<String>, format: Listing) -> anyhow::Result<()> {
    let rows = report::downloads(db, model.as_deref()).await?;
    print_downloads(&rows, format);
    Ok(())
}

pub(super) fn print_downloads(rows: &[report::DownloadSummary], format: Listing) {
    output::print(
        format,
        &output::Columns {
            headers: &[
                "researcher",
                "model",
                "files complete",
                "bytes sent",
                "fetches",
                "refused",
                "first fetch (UTC)",
                "last fetch (UTC)",
                "addresses",
            ],
            optional: &["first fetch (UTC)", "addresses", "refused", "fetches"],
            unbroken: &["last fetch (UTC)"],
        },
        rows.iter().map(|d| {
            (
                vec![
                    d.researcher.clone(),
                    d.model.clone(),
                    format!("{} of {}", d.files_complete, d.files_total),
                    d.bytes.to_string(),
                    d.fetches.to_string(),
                    d.refused.to_string(),
                    time_cell(d.first_fetch),
                    time_cell(d.last_fetch),
                    d.addresses.to_string(),
                ],
                serde_json::json!({
                    "researcher": d.researcher, "researcher_id": d.researcher_id, "model": d.model,
                    "files_complete": d.files_complete, "files_total": d.files_total, "bytes": d.bytes,
                    "fetches": d.fetches, "refused": d.refused,
                    "first_fetch": time_json(d.first_fetch), "last_fetch": time_json(d.last_fetch),
                    "addresses": d.addresses,
                }),
            )
        }),
    );
}

async fn who_has(db: &Db, model: &str, release: Option<&str>, format: Listing) -> anyhow::Result<()> {
    let holders = report::who_has(db, model, release).await?;
    print_holders(&holders, format);
    Ok(())
}

pub(super) fn print_holders(holders: &[report::Holder], format: Listing) {
    output::print(
        format,
        &output::Columns {
            headers: &[
                "researcher",
                "model",
                "release",
                "files",
                "bytes",
                "completed (UTC)",
            ],
            optional: &["model", "bytes"],
            unbroken: &["completed (UTC)"],
        },
        holders.iter().map(|h| {
            (
                vec![
                    h.researcher.clone(),
                    h.model.clone(),
                    h.release.clone(),
                    h.files.to_string(),
                    h.bytes.to_string(),
                    format_ms(h.completed_at),
                ],
                serde_json::json!({
                    "researcher": h.researcher, "researcher_id": h.researcher_id, "model": h.model,
                    "release": h.release, "files": h.files, "bytes": h.bytes,
                    "completed_at": format_ms_rfc3339(h.completed_at),
                }),
            )
        }),
    );
}

/// Addresses of a grant a table row shows; JSON lines carry them all.
const SHOWN_ADDRESSES: usize = 4;

async fn anomalies(db: &Db, thresholds: &Thresholds, format: Listing) -> anyhow::Result<()> {
    let found = report::anomalies(db, thresholds).await?;
    let archived = db::archives::newest(db.pool())
        .await?
        .map(|a| (a.last_seq, a.last_at));
    print_anomalies(&found, thresholds.since_ms, archived, format);
    Ok(())
}

pub(super) fn print_anomalies(
    found: &[report::Anomaly],
    since_ms: i64,
    archived: Option<(i64, i64)>,
    format: Listing,
) {
    output::print(
        format,
        &output::Columns {
            headers: &[
                "kind",
                "grant",
                "researcher",
                "model",
                "address",
                "detail",
                "first (UTC)",
                "last (UTC)",
            ],
            optional: &["grant", "first (UTC)", "address", "model"],
            unbroken: &["last (UTC)"],
        },
        found.iter().map(|a| {
            let text = |v: &Option<String>| v.clone().unwrap_or_default();
            let mut json = serde_json::to_value(a).unwrap_or_default();
            json["first"] = format_ms_rfc3339(a.first_at).into();
            json["last"] = format_ms_rfc3339(a.last_at).into();
            (
                vec![
                    a.kind.as_str().to_owned(),
                    text(&a.grant_id),
                    text(&a.researcher),
                    text(&a.model),
                    match a.addresses.len() {
                        0 => text(&a.client_ip),
                        n if n <= SHOWN_ADDRESSES => a.addresses.join(" "),
                        n => format!(
                            "{} and {} more",
                            a.addresses[..SHOWN_ADDRESSES].join(" "),
                            n - SHOWN_ADDRESSES
                        ),
                    },
                    a.detail.clone(),
                    format_ms(a.first_at),
                    format_ms(a.last_at),
                ],
                json,
            )
        }),
    );
    if found.is_empty() && format.kind == Format::Table {
        eprintln!("nothing above the thresholds");
    }
    if format.kind == Format::Table
        && let Some((last_seq, last_at)) = archived
        && since_ms <= last_at
    {
        // Totals were folded before the events left; what is read from the
        // log itself is not there any more.
        eprintln!(
            "events 1 to {} (to {} UTC) are archived: they are counted above, but bursts among them are not \
             looked for, and a --since among them counts from the next whole hour",
            last_seq,
            format_ms(last_at)
        );
    }
}

fn write_events(out: &mut Printer, format: Format, events: &[EventRow]) -> std::io::Result<()> {
    events
        .iter()
        .try_for_each(|e| out.row(event_cells(format, e), &event_json(e)))
}

/// Events read per page by `export`.
const EXPORT_PAGE: i64 = 5_000;

async fn export(
    app: &App,
    format: ExportFormat,
    archived: bool,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let db = &app.db;
    let format = match format {
        ExportFormat::Jsonl => Format::Jsonl,
        ExportFormat::Csv => Format::Csv,
    };
    let mut out = match &output {
        Some(path) => {
            let file =
                std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            Printer::new(format, EVENT_FIELDS, Box::new(std::io::BufWriter::new(file)))?
        }
        None => Printer::stdout(format, EVENT_FIELDS)?,
    };
    let mut after = i64::MIN;
    let mut count: u64 = 0;
    let segments = db::archives::all(db.pool()).await?;
    if archived {
        let archive = app.audit_archive();
        for segment in &segments {
            let mut reader = audit::archive::SegmentReader::open(&archive, segment).await?;
            loop {
                let page;
                (reader, page) = reader.next_page(EXPORT_PAGE as usize).await?;
                if let Err(err) = write_events(&mut out, format, &page) {
                    return output::until_closed(Err(err));
                }
                count += page.len() as u64;
                match page.last() {
                    Some(last) => after = last.seq,
                    None => break,
                }
            }
        }
    } else if let Some(last) = segments.last() {
        eprintln!(
            "events 1 to {} are archived and not exported: `--archived` reads them back",
            last.last_seq
        );
    }
    loop {
        let page = db::audit::page_after(db.pool(), after, EXPORT_PAGE).await?;
        if let Err(err) = write_events(&mut out, format, &page) {
            return output::until_closed(Err(err));
        }
        count += page.len() as u64;
        match page.last() {
            Some(last) if page.len() as i64 == EXPORT_PAGE => after = last.seq,
            _ => break,
        }
    }
    output::until_closed(out.finish())?;
    if let Some(path) = &output {
        eprintln!("exported {count} events to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_cells_match_their_headers() {
        let e = EventRow {
            seq: 1,
            at: 0,
            action: "file.fetch".into(),
            outcome: "ok".into(),
            reason: None,
            actor: None,
            subject: Some("a, \"b\"".into()),
            model_id: None,
            application_id: None,
            grant_id: None,
            researcher_id: None,
            file_id: None,
            range_start: Some(0),
            range_end: Some(9),
            bytes: Some(10),
            client_ip: None,
            user_agent: None,
            request_id: None,
            prev_hash: "p".into(),
            hash: "h".into(),
            occurrences: None,
        };
        for format in [Format::Table, Format::Csv] {
            assert_eq!(event_cells(format, &e).len(), event_headers(format).len());
        }
        let json = event_json(&e);
        for field in EVENT_FIELDS {
            assert!(json.get(field).is_some(), "{field} is in the JSON too");
        }
    }
}
