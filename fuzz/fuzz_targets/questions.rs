//! A model's own questions (JSON set by its owner) and the answers a
//! researcher sends: accepted definitions are well-formed and stable when
//! stored and read again, and an accepted answer is one the question allows
//! and is kept unchanged when sent again.
#![no_main]

use std::collections::{BTreeMap, HashSet};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weightgate::domain::questions::{
    self, Kind, MAX_HELP, MAX_LABEL, MAX_LONG_ANSWER, MAX_OPTIONS, MAX_QUESTIONS, MAX_SHORT_ANSWER, Question,
};

#[derive(Arbitrary, Debug)]
enum Definitions {
    Text(String),
    Built(Vec<BuiltQuestion>),
}

#[derive(Arbitrary, Debug)]
struct BuiltQuestion {
    id: String,
    label: String,
    kind: u8,
    required: bool,
    options: Vec<String>,
    help: String,
}

#[derive(Arbitrary, Debug)]
struct Input {
    form: Vec<(String, String)>,
    definitions: Definitions,
}

const KINDS: [Kind; 6] = [
    Kind::Text,
    Kind::LongText,
    Kind::Select,
    Kind::Checkbox,
    Kind::Country,
    Kind::Url,
];

fn one_line(s: &str, max: usize) {
    assert!(
        !s.is_empty() && s.trim() == s && s.chars().count() <= max,
        "{s:?}"
    );
    assert!(!s.chars().any(|c| c.is_control() && c != '\t'), "{s:?}");
}

fn check_definitions(asked: &[Question]) {
    assert!(asked.len() <= MAX_QUESTIONS);
    let mut ids = HashSet::new();
    for q in asked {
        assert!(ids.insert(&q.id), "{:?} twice", q.id);
        assert!(q.id.starts_with(|c: char| c.is_ascii_lowercase()) && q.id.len() <= 40);
        assert!(
            q.id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        );
        one_line(&q.label, MAX_LABEL);
        assert!(q.help.chars().count() <= MAX_HELP);
        if q.kind == Kind::Select {
            assert!((1..=MAX_OPTIONS).contains(&q.options.len()));
            let distinct: HashSet<_> = q.options.iter().collect();
            assert_eq!(distinct.len(), q.options.len());
            q.options.iter().for_each(|o| one_line(o, MAX_LABEL));
        } else {
            assert!(q.options.is_empty());
        }
    }
    let stored = serde_json::to_string(asked).unwrap();
    assert_eq!(questions::parse_definitions(&stored).as_deref(), Ok(asked));
    assert_eq!(questions::stored(&stored), asked);
}

fuzz_target!(|input: Input| {
    let json = match input.definitions {
        Definitions::Text(text) => text,
        Definitions::Built(built) => {
            let built: Vec<Question> = built
                .into_iter()
                .map(|b| Question {
                    id: b.id,
                    label: b.label,
                    kind: KINDS[usize::from(b.kind) % KINDS.len()],
                    required: b.required,
                    options: b.options,
                    help: b.help,
                })
                .collect();
            serde_json::to_string(&built).unwrap()
        }
    };
    let Ok(asked) = questions::parse_definitions(&json) else {
        return;
    };
    check_definitions(&asked);

    let form: BTreeMap<String, String> = input.form.into_iter().collect();
    let answers = match questions::validate_answers(&asked, &form) {
        Ok(answers) => answers,
        Err(errors) => {
            assert!(!errors.is_empty());
            for field in errors.keys() {
                assert!(
                    asked.iter().any(|q| &q.field() == field),
                    "an error under {field:?}"
                );
            }
            return;
        }
    };
    assert_eq!(answers.len(), asked.len());
    for (q, a) in asked.iter().zip(&answers) {
        assert_eq!((&q.id, &q.label, q.kind), (&a.id, &a.label, a.kind));
        if a.value.is_empty() {
            assert!(!q.required && q.kind != Kind::Checkbox);
        }
        match q.kind {
            Kind::Checkbox => assert!(a.value == "yes" || (a.value == "no" && !q.required)),
            _ if a.value.is_empty() => {}
            Kind::Select => assert!(q.options.contains(&a.value)),
            Kind::Country => assert!(questions::country_name(&a.value).is_some()),
            Kind::Url => {
                let url = url::Url::parse(&a.value).expect("a kept address parses");
                assert!(matches!(url.scheme(), "http" | "https"));
            }
            Kind::Text => one_line(&a.value, MAX_SHORT_ANSWER),
            Kind::LongText => {
                assert!(a.value.trim() == a.value && a.value.chars().count() <= MAX_LONG_ANSWER)
            }
        }
        let again = BTreeMap::from([(q.field(), a.value.clone())]);
        let kept = questions::validate_answers(std::slice::from_ref(q), &again)
            .unwrap_or_else(|e| panic!("{:?} is refused when sent again: {e:?}", a.value));
        assert_eq!(kept[0].value, a.value);
        let _ = a.display();
    }
    let stored = serde_json::to_string(&answers).unwrap();
    assert_eq!(questions::stored_answers(&stored), answers);
});
