//! The application form as a browser or a script posts it: decoded the way
//! the portal decodes `application/x-www-form-urlencoded` bodies, then
//! checked. What passes is trimmed, within its limits, free of control
//! characters (and of line breaks where one line is asked for), and answers
//! every question of the model in the form its kind requires.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use weightgate::{
    domain::applications::{ApplicationForm, MAX_AFFILIATION, MAX_INTENDED_USE, MAX_NAME},
    db::models::Model,
    domain::questions::{self, Kind},
    types::Email,
};

const QUESTIONS: &str = r#"[
    {"id": "role", "label": "Your role", "kind": "select", "options": ["Student", "Researcher", "Faculty", "Industry"], "required": true},
    {"id": "country", "label": "Country of your institution", "kind": "country", "required": true},
    {"id": "orcid", "label": "ORCID iD or a paper of yours", "kind": "url"},
    {"id": "plan", "label": "Your plan", "kind": "long_text"},
    {"id": "team", "label": "Your team", "kind": "text"},
    {"id": "no_redistribution", "label": "I will not redistribute the weights", "kind": "checkbox", "required": true}
]"#;

fn model() -> Model {
    Model {
        id: "m1".into(),
        slug: "demo-model".into(),
        title: "Demo".into(),
        terms: "Be good.".into(),
        terms_version: 3,
        created_at: 0,
        quota_bytes: None,
        quota_files: None,
        questions: QUESTIONS.into(),
        reapply_after_days: 30,
    }
}

fn clean(value: &str, max: usize, one_line: bool) {
    assert!(
        !value.is_empty() && value.trim() == value,
        "{value:?} is not trimmed"
    );
    assert!(value.chars().count() <= max, "{value:?} is over {max} characters");
    assert!(
        !value
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')),
        "{value:?} holds control characters"
    );
    if one_line {
        assert!(!value.contains(['\n', '\r']), "{value:?} is not one line");
    }
}

fuzz_target!(|body: &[u8]| {
    let Ok(form) = serde_urlencoded::from_bytes::<ApplicationForm>(body) else {
        return;
    };
    let model = model();
    let Ok(valid) = form.validate(&model) else {
        return;
    };
    clean(&valid.name, MAX_NAME, true);
    clean(&valid.affiliation, MAX_AFFILIATION, true);
    clean(&valid.intended_use, MAX_INTENDED_USE, false);
    assert_eq!(valid.terms_version, model.terms_version);
    assert_eq!(
        valid.email.as_str().parse::<Email>().as_ref(),
        Ok(&valid.email),
        "a checked address does not check again as itself"
    );
    assert!(matches!(
        form.accept_terms.as_deref(),
        Some("on" | "true" | "yes" | "1")
    ));

    let asked = questions::parse_definitions(QUESTIONS).unwrap();
    assert_eq!(valid.answers.len(), asked.len());
    let submitted: &BTreeMap<String, String> = &form.answers;
    for (q, a) in asked.iter().zip(&valid.answers) {
        assert_eq!((&q.id, &q.label, q.kind), (&a.id, &a.label, a.kind));
        if a.value.is_empty() {
            assert!(!q.required, "{} is required", q.id);
            continue;
        }
        match q.kind {
            Kind::Select => assert!(q.options.contains(&a.value)),
            Kind::Country => assert!(questions::country_name(&a.value).is_some()),
            Kind::Checkbox => assert!(a.value == "yes" || (a.value == "no" && !q.required)),
            Kind::Url => {
                let url = url::Url::parse(&a.value).expect("a kept address parses");
                assert!(matches!(url.scheme(), "http" | "https"), "{url}");
            }
            Kind::Text => clean(&a.value, questions::MAX_SHORT_ANSWER, true),
            Kind::LongText => clean(&a.value, questions::MAX_LONG_ANSWER, false),
        }
        if q.kind != Kind::Checkbox {
            assert!(submitted.contains_key(&q.field()));
        }
        // Sent again as it was kept, an answer is kept unchanged.
        let again = BTreeMap::from([(q.field(), a.value.clone())]);
        let kept = questions::validate_answers(std::slice::from_ref(q), &again)
            .unwrap_or_else(|e| panic!("{:?} is refused when sent again: {e:?}", a.value));
        assert_eq!(kept[0].value, a.value);
    }
});
