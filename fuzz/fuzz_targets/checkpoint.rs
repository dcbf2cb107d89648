//! Exported audit checkpoints, as an operator brings one back to
//! `weightgate audit verify`: parsing accepts only checkpoints that name a real
//! key, round-trips, and a signature holds for exactly what was signed.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weightgate::audit::checkpoint::{AuditKey, ExportedCheckpoint, FORMAT};

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any text as an exported checkpoint.
    Text(String),
    /// A checkpoint the portal signed and exported, then possibly altered.
    Signed {
        seq: i64,
        hash: String,
        at: i64,
        pretty: bool,
        change: Option<Change>,
    },
}

#[derive(Arbitrary, Debug)]
enum Change {
    Seq(i64),
    Hash(String),
    At(i64),
    Signature(String),
    PublicKey(String),
}

fn key() -> &'static AuditKey {
    static KEY: OnceLock<AuditKey> = OnceLock::new();
    KEY.get_or_init(|| AuditKey::from_seed(&[7; 32]).unwrap())
}

fn reads_back(c: &ExportedCheckpoint) {
    let text = serde_json::to_string(c).unwrap();
    let back = ExportedCheckpoint::parse(&text).expect("an exported checkpoint reads back");
    assert_eq!(&back, c);
    assert_eq!(back.signature_holds(), c.signature_holds());
}

fuzz_target!(|input: Input| match input {
    Input::Text(text) => {
        if let Ok(c) = ExportedCheckpoint::parse(&text) {
            assert_eq!(c.format, FORMAT);
            assert!(c.public().is_ok());
            reads_back(&c);
        }
    }
    Input::Signed {
        seq,
        hash,
        at,
        pretty,
        change,
    } => {
        let row = key().sign(seq, &hash, at);
        let exported = ExportedCheckpoint::new(&row, &key().public_key());
        let text = if pretty {
            serde_json::to_string_pretty(&exported).unwrap()
        } else {
            serde_json::to_string(&exported).unwrap()
        };
        let parsed = ExportedCheckpoint::parse(&text).expect("an exported checkpoint reads back");
        assert_eq!(parsed, exported);
        assert!(parsed.signature_holds());
        let Some(change) = change else { return };
        let mut altered = parsed.clone();
        match change {
            Change::Seq(v) => altered.seq = v,
            Change::Hash(v) => altered.hash = v,
            Change::At(v) => altered.at = v,
            Change::Signature(v) => altered.signature = v,
            Change::PublicKey(v) => altered.public_key = v,
        }
        let signed_fields_same =
            (altered.seq, &altered.hash, altered.at) == (parsed.seq, &parsed.hash, parsed.at);
        let key_same = altered.public().ok() == parsed.public().ok();
        if altered.signature_holds() {
            assert!(
                signed_fields_same && key_same,
                "an altered checkpoint still verifies: {altered:?}"
            );
        } else {
            assert!(
                !(signed_fields_same && key_same && altered.signature == parsed.signature),
                "an unaltered checkpoint does not verify"
            );
        }
        if let Ok(text) = serde_json::to_string(&altered) {
            if let Ok(back) = ExportedCheckpoint::parse(&text) {
                reads_back(&back);
            }
        }
    }
});
