//! A model's own application questions: their definitions (set by the model's
//! owner), and the checks a researcher's answers pass.

use std::{collections::BTreeMap, sync::OnceLock};

use serde::{Deserialize, Serialize};

use crate::domain::forms::{FieldErrors, single_line, text};

pub(crate) const MAX_QUESTIONS: usize = 50;
pub(crate) const MAX_LABEL: usize = 300;
pub(crate) const MAX_HELP: usize = 1000;
pub(crate) const MAX_OPTIONS: usize = 100;
pub(crate) const MAX_SHORT_ANSWER: usize = 500;
pub(crate) const MAX_LONG_ANSWER: usize = 5000;
pub(crate) const MAX_URL: usize = 2000;

/// What kind of answer a question takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// One line of text.
    Text,
    /// Several paragraphs.
    LongText,
    /// One of `options`.
    Select,
    /// Ticked or not; a required one must be ticked.
    Checkbox,
    /// An ISO 3166-1 country, stored as its two-letter code.
    Country,
    /// An `http` or `https` URL, such as an ORCID iD or a paper.
    Url,
}

/// One question, as the model's owner defined it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    /// Names the answer; lower-case letters, digits and `_`.
    pub(crate) id: String,
    pub(crate) label: String,
    pub(crate) kind: Kind,
    #[serde(default)]
    pub(crate) required: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) options: Vec<String>,
    /// A hint shown under the field.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) help: String,
}

impl Question {
    /// The form field that carries the answer.
    pub(crate) fn field(&self) -> String {
        format!("q_{}", self.id)
    }
}

/// An answer, kept with the question as it was asked so that a later change
/// of the questions does not change what reviewers read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Answer {
    pub(crate) id: String,
    pub(crate) label: String,
    pub(crate) kind: Kind,
    /// Empty when an optional question was left blank.
    pub(crate) value: String,
}

impl Answer {
    /// The answer in words: a country's name, "yes"/"no" for a checkbox.
    pub(crate) fn display(&self) -> String {
        match self.kind {
            Kind::Country => country_name(&self.value)
                .map(|name| format!("{name} ({})", self.value))
                .unwrap_or_else(|| self.value.clone()),
            _ => self.value.clone(),
        }
    }
}

fn valid_id(id: &str) -> bool {
    (1..=40).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Parses and checks a JSON array of questions.
pub(crate) fn parse_definitions(json: &str) -> Result<Vec<Question>, String> {
    let questions: Vec<Question> =
        serde_json::from_str(json).map_err(|e| format!("the questions are not valid: {e}"))?;
    if questions.len() > MAX_QUESTIONS {
        return Err(format!("at most {MAX_QUESTIONS} questions"));
    }
    let mut seen = std::collections::HashSet::new();
    let mut checked = Vec::with_capacity(questions.len());
    for (i, mut q) in questions.into_iter().enumerate() {
        let at = format!("question {} ({:?})", i + 1, q.id);
        if !valid_id(&q.id) {
            return Err(format!(
                "{at}: an id has 1 to 40 lower-case letters, digits and '_', starting with a letter"
            ));
        }
        if !seen.insert(q.id.clone()) {
            return Err(format!("{at}: the id is used twice"));
        }
        q.label = single_line(&q.label, MAX_LABEL, "the label").map_err(|e| format!("{at}: {e}"))?;
        if !q.help.trim().is_empty() {
            q.help = text(&q.help, MAX_HELP, "the help").map_err(|e| format!("{at}: {e}"))?;
        }
        match q.kind {
            Kind::Select => {
                if q.options.is_empty() || q.options.len() > MAX_OPTIONS {
                    return Err(format!("{at}: a select has 1 to {MAX_OPTIONS} options"));
                }
                let mut options = Vec::with_capacity(q.options.len());
                for o in &q.options {
                    let o = single_line(o, MAX_LABEL, "an option").map_err(|e| format!("{at}: {e}"))?;
                    if options.contains(&o) {
                        return Err(format!("{at}: the option {o:?} is listed twice"));
                    }
                    options.push(o);
                }
                q.options = options;
            }
            _ if !q.options.is_empty() => {
                return Err(format!("{at}: only a select has options"));
            }
            _ => {}
        }
        checked.push(q);
    }
    Ok(checked)
}

/// What a model asks after a change of its questions, said in full.
pub(crate) fn asks(slug: &str, count: usize) -> String {
    match count {
        0 => format!("{slug} now asks no questions of its own."),
        1 => format!("{slug} now asks 1 question."),
        n => format!("{slug} now asks {n} questions."),
    }
}

/// Rows the dashboard's question editor offers beyond the model's questions,
/// for new ones.
pub(crate) const NEW_ROWS: usize = 3;

/// One question as the dashboard's editor shows it: a row of plain fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EditorRow {
    pub(crate) id: String,
    pub(crate) label: String,
    /// The kind's name as stored (`text`, `long_text`, ...).
    pub(crate) kind: String,
    pub(crate) required: bool,
    /// The options of a select, one per line.
    pub(crate) options: String,
    pub(crate) help: String,
}

impl EditorRow {
    pub(crate) fn of(q: &Question) -> Self {
        Self {
            id: q.id.clone(),
            label: q.label.clone(),
            kind: kind_name(q.kind).to_owned(),
            required: q.required,
            options: q.options.join("\n"),
            help: q.help.clone(),
        }
    }
}

/// The name a kind is stored and sent under.
pub(crate) fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "text",
        Kind::LongText => "long_text",
        Kind::Select => "select",
        Kind::Checkbox => "checkbox",
        Kind::Country => "country",
        Kind::Url => "url",
    }
}

/// Every kind, with the name the editor shows.
pub(crate) const KINDS: [(Kind, &str); 6] = [
    (Kind::Text, "One line of text"),
    (Kind::LongText, "Several paragraphs"),
    (Kind::Select, "One of a list"),
    (Kind::Checkbox, "A box to tick"),
    (Kind::Country, "A country"),
    (Kind::Url, "A web address"),
];

/// An id made from a label, for a new question whose id was left blank:
/// "Your ORCID iD" becomes `your_orcid_id`.
pub(crate) fn id_from_label(label: &str) -> String {
    let mut id = String::new();
    for c in label.trim().chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            id.push(c);
        } else if !id.is_empty() && !id.ends_with('_') {
            id.push('_');
        }
    }
    let mut id = id.trim_end_matches('_').to_owned();
    if !id.starts_with(|c: char| c.is_ascii_lowercase()) {
        id.insert_str(0, "q_");
    }
    id.truncate(40);
    id.trim_end_matches('_').to_owned()
}

/// A row of the editor as it was sent, kept as typed so that a refused
/// edit can be shown again exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SentRow {
    pub(crate) fields: EditorRow,
    /// The position as typed; blank keeps the row's place.
    pub(crate) position: String,
    pub(crate) remove: bool,
    /// Whether the row showed a saved question, not a blank one for a new question.
    pub(crate) existing: bool,
}

impl SentRow {
    /// Whether nothing was typed in the row.
    pub(crate) fn is_blank(&self) -> bool {
        let f = &self.fields;
        f.id.trim().is_empty()
            && f.label.trim().is_empty()
            && f.options.trim().is_empty()
            && f.help.trim().is_empty()
    }
}

/// The editor's rows in the form's order. Fields are `rN_id`, `rN_label`,
/// `rN_kind`, `rN_required`, `rN_options`, `rN_help`, `rN_position`,
/// `rN_remove` and `rN_existing` for row N (digits only); other fields are
/// ignored.
pub(crate) fn editor_rows(fields: &[(String, String)]) -> Result<Vec<SentRow>, String> {
    let mut rows: BTreeMap<usize, SentRow> = BTreeMap::new();
    for (name, value) in fields {
        let Some((row, field)) = name
            .strip_prefix('r')
            .and_then(|rest| rest.split_once('_'))
            .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|(n, field)| Some((n.parse::<usize>().ok()?, field)))
        else {
            continue;
        };
        if row >= MAX_QUESTIONS + NEW_ROWS {
            return Err(format!("at most {MAX_QUESTIONS} questions"));
        }
        let r = rows.entry(row).or_default();
        match field {
            "id" => r.fields.id = value.clone(),
            "label" => r.fields.label = value.clone(),
            "kind" => r.fields.kind = value.clone(),
            "required" => r.fields.required = !value.is_empty(),
            "options" => r.fields.options = value.clone(),
            "help" => r.fields.help = value.clone(),
            "position" => r.position = value.clone(),
            "remove" => r.remove = !value.is_empty(),
            "existing" => r.existing = !value.is_empty(),
            _ => {}
        }
    }
    Ok(rows.into_values().collect())
}

/// The questions the editor's rows describe, in the order they ask for,
/// not yet checked (see [`parse_definitions`]). A row marked for removal,
/// or left wholly blank, is dropped; a blank id is made from the label; a
/// select's options are its non-blank lines, and other kinds have none.
pub(crate) fn from_rows(rows: &[SentRow]) -> Result<Vec<Question>, String> {
    let mut ordered = Vec::new();
    for (n, row) in rows.iter().enumerate() {
        if row.remove || row.is_blank() {
            continue;
        }
        let f = &row.fields;
        let at = match f.label.trim() {
            "" => format!("the question in row {}", n + 1),
            label => format!("the question {label:?}"),
        };
        let position = match row.position.trim() {
            "" => n as f64 + 1.0,
            p => p
                .parse::<f64>()
                .ok()
                .filter(|p| p.is_finite())
                .ok_or_else(|| format!("{at}: the position must be a number"))?,
        };
        let kind = KINDS
            .iter()
            .map(|(k, _)| *k)
            .find(|k| kind_name(*k) == f.kind)
            .ok_or_else(|| format!("{at}: unknown kind {:?}", f.kind))?;
        let id = match f.id.trim() {
            "" => id_from_label(&f.label),
            id => id.to_owned(),
        };
        let options = if kind == Kind::Select {
            f.options
                .lines()
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        };
        let question = Question {
            id,
            label: f.label.clone(),
            kind,
            required: f.required,
            options,
            help: f.help.clone(),
        };
        ordered.push((position, n, question));
    }
    ordered.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    Ok(ordered.into_iter().map(|(_, _, q)| q).collect())
}

/// The questions stored with a model; an unreadable value reads as none
/// (it was checked when it was stored).
pub(crate) fn stored(json: &str) -> Vec<Question> {
    serde_json::from_str(json).unwrap_or_default()
}

/// The answers stored with an application.
pub(crate) fn stored_answers(json: &str) -> Vec<Answer> {
    serde_json::from_str(json).unwrap_or_default()
}

fn check_url(value: &str) -> Result<String, String> {
    let value = single_line(value, MAX_URL, "The address")?;
    match url::Url::parse(&value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()) => {
            Ok(u.to_string())
        }
        _ => Err("Enter a full web address starting with https://".into()),
    }
}

/// Checks the answers submitted in `form` (by field name) against the
/// questions; each problem is reported under the question's field name.
pub(crate) fn validate_answers(
    questions: &[Question],
    form: &BTreeMap<String, String>,
) -> Result<Vec<Answer>, FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut answers = Vec::with_capacity(questions.len());
    for q in questions {
        let field = q.field();
        let raw = form.get(&field).map_or("", String::as_str);
        let blank = raw.trim().is_empty();
        let value = if q.kind == Kind::Checkbox {
            let ticked = matches!(raw, "on" | "true" | "yes" | "1");
            if q.required && !ticked {
                Err("Tick this box to apply".to_owned())
            } else {
                Ok(if ticked { "yes" } else { "no" }.to_owned())
            }
        } else if blank {
            if q.required {
                Err("This question needs an answer".to_owned())
            } else {
                Ok(String::new())
            }
        } else {
            match q.kind {
                Kind::Text => single_line(raw, MAX_SHORT_ANSWER, "The answer"),
                Kind::LongText => text(raw, MAX_LONG_ANSWER, "The answer"),
                Kind::Select => q
                    .options
                    .iter()
                    .find(|o| o.as_str() == raw.trim())
                    .cloned()
                    .ok_or_else(|| "Choose one of the options".to_owned()),
                Kind::Country => country_name(raw.trim())
                    .map(|_| raw.trim().to_owned())
                    .ok_or_else(|| "Choose a country from the list".to_owned()),
                Kind::Url => check_url(raw),
                Kind::Checkbox => unreachable!("handled above"),
            }
        };
        match value {
            Ok(value) => answers.push(Answer {
                id: q.id.clone(),
                label: q.label.clone(),
                kind: q.kind,
                value,
            }),
            Err(e) => {
                errors.insert(field, e);
            }
        }
    }
    if errors.is_empty() {
        Ok(answers)
    } else {
        Err(errors)
    }
}

/// Every ISO 3166-1 country as (two-letter code, English short name),
/// sorted by name. The names are the ones ISO publishes now ("Eswatini",
/// "Türkiye", "Czechia"), from the maintained `rust_iso3166` tables.
pub(crate) fn countries() -> &'static [(&'static str, &'static str)] {
    static LIST: OnceLock<Vec<(&'static str, &'static str)>> = OnceLock::new();
    LIST.get_or_init(|| {
        let mut list: Vec<_> = rust_iso3166::ALL.iter().map(|c| (c.alpha2, c.name)).collect();
        list.sort_by_cached_key(|(_, name)| sort_key(name));
        list
    })
}

/// How a name sorts in the list: by its letters without accents
/// (canonical decomposition, combining marks dropped), so that
/// "Åland Islands" sits among the A's and "Türkiye" among the T's.
fn sort_key(name: &str) -> String {
    use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};
    name.nfd().filter(|c| !is_combining_mark(*c)).collect()
}

/// The name of the country with this two-letter code.
pub(crate) fn country_name(code: &str) -> Option<&'static str> {
    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    rust_iso3166::from_alpha2(code).map(|c| c.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFINITIONS: &str = r#"[
        {"id": "orcid", "label": "ORCID iD", "kind": "url"},
        {"id": "role", "label": "Your role", "kind": "select", "options": ["Student", "Faculty"], "required": true},
        {"id": "country", "label": "Country", "kind": "country", "required": true},
        {"id": "ethics", "label": "An ethics board approved the project", "kind": "checkbox", "required": true},
        {"id": "plan", "label": "Plan", "kind": "long_text"}
    ]"#;

    fn form(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn definitions_are_checked() {
        assert_eq!(parse_definitions(DEFINITIONS).unwrap().len(), 5);
        for (bad, says) in [
            (r#"[{"id": "Bad Id", "label": "x", "kind": "text"}]"#, "an id has"),
            (
                r#"[{"id": "a", "label": "x", "kind": "text"}, {"id": "a", "label": "y", "kind": "text"}]"#,
                "used twice",
            ),
            (r#"[{"id": "a", "label": "x", "kind": "select"}]"#, "options"),
            (
                r#"[{"id": "a", "label": "x", "kind": "text", "options": ["b"]}]"#,
                "only a select",
            ),
            (r#"[{"id": "a", "label": " ", "kind": "text"}]"#, "label"),
            (r#"[{"id": "a", "label": "x", "kind": "colour"}]"#, "not valid"),
            (r#"{"id": "a"}"#, "not valid"),
        ] {
            let err = parse_definitions(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn good_answers_are_kept_with_their_questions() {
        let questions = parse_definitions(DEFINITIONS).unwrap();
        let answers = validate_answers(
            &questions,
            &form(&[
                ("q_orcid", "https://orcid.org/0000-0002-1825-0097"),
                ("q_role", "Faculty"),
                ("q_country", "DE"),
                ("q_ethics", "on"),
            ]),
        )
        .unwrap();
        assert_eq!(answers[0].value, "https://orcid.org/0000-0002-1825-0097");
        assert_eq!(answers[2].display(), "Germany (DE)");
        assert_eq!(answers[3].value, "yes");
        assert_eq!(answers[4].value, "", "an optional question may stay blank");
    }

    #[test]
    fn each_bad_answer_is_reported_under_its_field() {
        let questions = parse_definitions(DEFINITIONS).unwrap();
        let errors = validate_answers(
            &questions,
            &form(&[
                ("q_orcid", "javascript:alert(1)"),
                ("q_role", "Dean"),
                ("q_country", "XX"),
            ]),
        )
        .unwrap_err();
        let fields: Vec<_> = errors.keys().map(String::as_str).collect();
        assert_eq!(fields, ["q_country", "q_ethics", "q_orcid", "q_role"]);
    }

    #[test]
    fn the_country_list_is_complete_and_sorted() {
        let list = countries();
        assert!(list.len() > 240);
        assert!(list.windows(2).all(|w| sort_key(w[0].1) <= sort_key(w[1].1)));
        assert_eq!(country_name("FR"), Some("France"));
        // The names ISO uses now, not the ones it retired.
        assert_eq!(country_name("SZ"), Some("Eswatini"));
        assert_eq!(country_name("TR"), Some("Türkiye"));
        assert_eq!(country_name("CZ"), Some("Czechia"));
        assert_eq!(country_name("MK"), Some("North Macedonia"));
        assert!(!list.iter().any(|(_, name)| name.contains("Swaziland")));
        // Accented names sort by their letters.
        let position = |code: &str| list.iter().position(|(c, _)| *c == code).unwrap();
        assert!(
            position("AX") < position("AL"),
            "Åland Islands sorts before Albania"
        );
        assert!(
            position("TR") < position("TM"),
            "Türkiye sorts before Turkmenistan"
        );
        // Codes are exact: lower case and unknown codes name nothing.
        assert_eq!(country_name("fr"), None);
        assert_eq!(country_name("XX"), None);
    }

    /// What the dashboard does with the editor's form.
    fn from_editor(fields: &[(String, String)]) -> Result<Vec<Question>, String> {
        from_rows(&editor_rows(fields)?)
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_editor_orders_drops_and_names_rows() {
        let form = fields(&[
            ("authenticity_token", "x"),
            ("r0_id", "orcid"),
            ("r0_label", "ORCID iD"),
            ("r0_kind", "url"),
            ("r0_position", "2"),
            ("r1_id", "role"),
            ("r1_label", "Your role"),
            ("r1_kind", "select"),
            ("r1_required", "on"),
            ("r1_options", "Student\r\n\r\n Faculty \n"),
            ("r1_position", "1"),
            ("r2_id", "old"),
            ("r2_label", "Old question"),
            ("r2_kind", "text"),
            ("r2_remove", "on"),
            // A new row: the id comes from the label; a text keeps no options.
            ("r3_id", ""),
            ("r3_label", "  2nd Lab's web page!  "),
            ("r3_kind", "text"),
            ("r3_options", "left over from a select"),
            ("r3_position", ""),
            // A blank new row.
            ("r4_id", ""),
            ("r4_label", ""),
            ("r4_kind", "text"),
            ("r4_position", ""),
        ]);
        let questions = from_editor(&form).unwrap();
        let ids: Vec<&str> = questions.iter().map(|q| q.id.as_str()).collect();
        assert_eq!(ids, ["role", "orcid", "q_2nd_lab_s_web_page"]);
        assert_eq!(questions[0].options, ["Student", "Faculty"]);
        assert!(questions[0].required && !questions[1].required);
        assert!(questions[2].options.is_empty());
        // What the editor builds is what the JSON path checks.
        let json = serde_json::to_string(&questions).unwrap();
        let checked = parse_definitions(&json).unwrap();
        assert_eq!(checked[2].label, "2nd Lab's web page!");
        // And each question shown again comes back the same.
        let shown: Vec<(String, String)> = checked
            .iter()
            .enumerate()
            .flat_map(|(n, q)| {
                let row = EditorRow::of(q);
                [
                    (format!("r{n}_id"), row.id),
                    (format!("r{n}_label"), row.label),
                    (format!("r{n}_kind"), row.kind),
                    (
                        format!("r{n}_required"),
                        if row.required { "on".into() } else { String::new() },
                    ),
                    (format!("r{n}_options"), row.options),
                    (format!("r{n}_help"), row.help),
                ]
            })
            .collect();
        assert_eq!(from_editor(&shown).unwrap(), checked);
    }

    #[test]
    fn the_editor_refuses_unknown_kinds_bad_positions_and_too_many_rows() {
        let err = from_editor(&fields(&[("r0_label", "A"), ("r0_kind", "essay")])).unwrap_err();
        assert!(err.contains("unknown kind"), "{err}");
        let err = from_editor(&fields(&[
            ("r0_label", "A"),
            ("r0_kind", "text"),
            ("r0_position", "first"),
        ]))
        .unwrap_err();
        assert!(err.contains("position must be a number"), "{err}");
        let err = from_editor(&fields(&[
            ("r0_label", "A"),
            ("r0_kind", "text"),
            ("r0_position", "NaN"),
        ]))
        .unwrap_err();
        assert!(err.contains("position must be a number"), "{err}");
        let err = from_editor(&fields(&[("r9999999_label", "A")])).unwrap_err();
        assert!(err.contains("at most"), "{err}");
        // Names that only look like rows are ignored.
        assert!(
            from_editor(&fields(&[
                ("rx_label", "A"),
                ("r_label", "B"),
                ("r1", "C"),
                ("r+1_label", "D")
            ]))
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn ids_made_from_labels_are_valid() {
        for label in [
            "Your ORCID iD",
            "  ",
            "Ünïcödé only",
            "42",
            &"long ".repeat(30),
            "a__b",
            "--x--",
        ] {
            let id = id_from_label(label);
            assert!(valid_id(&id), "{label:?} gave {id:?}");
        }
        assert_eq!(id_from_label("Your ORCID iD"), "your_orcid_id");
    }
}
