//! Release manifests, as the client reads them before trusting a byte: a
//! manifest that parses is consistent, names only safe paths, tiles every file
//! with its chunks, and reads back equal after writing it out.
#![no_main]

use std::collections::HashSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weightgate::{
    client::chunk_bounds,
    crypto::manifests::{MANIFEST_FORMAT, Manifest, ManifestFile},
    types::{is_safe_file_name, is_safe_release_path},
};

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any text as a manifest.
    Text(String),
    /// A manifest written by a (possibly hostile) portal.
    Built {
        right_format: bool,
        model: String,
        release: String,
        chunk_size: u64,
        files: Vec<BuiltFile>,
    },
}

#[derive(Arbitrary, Debug)]
struct BuiltFile {
    name: String,
    size: u64,
    sha256: String,
    /// `None`: as many chunks as the size needs, when that is a sane number.
    chunks: Option<u8>,
}

/// What every accepted manifest must satisfy.
fn check(m: &Manifest) {
    assert_eq!(m.format, MANIFEST_FORMAT);
    assert!(m.chunk_size > 0);
    assert!(
        is_safe_file_name(&m.release),
        "the release name {:?} is not a safe directory name",
        m.release
    );
    let mut names = HashSet::new();
    for f in &m.files {
        assert!(is_safe_release_path(&f.name), "unsafe file path {:?}", f.name);
        assert!(names.insert(&f.name), "{:?} is listed twice", f.name);
        let mut next = 0;
        for i in 0..f.chunks.len() {
            let (start, end) = chunk_bounds(f, m.chunk_size, i);
            assert_eq!(start, next, "chunk {i} of {:?} leaves a gap", f.name);
            assert!(end <= f.size && (start < end || f.size == 0));
            next = end;
        }
        assert_eq!(next, f.size, "the chunks of {:?} do not cover it", f.name);
    }
    let text = serde_json::to_string(m).unwrap();
    assert_eq!(&Manifest::parse(&text).expect("a written manifest reads back"), m);
}

fuzz_target!(|input: Input| match input {
    Input::Text(text) => {
        if let Ok(m) = Manifest::parse(&text) {
            check(&m);
        }
    }
    Input::Built {
        right_format,
        model,
        release,
        chunk_size,
        files,
    } => {
        let files: Vec<ManifestFile> = files
            .into_iter()
            .filter_map(|f| {
                let count = match f.chunks {
                    Some(n) => u64::from(n),
                    None if chunk_size == 0 => 1,
                    None => f.size.div_ceil(chunk_size).max(1),
                };
                (count <= 4096).then(|| ManifestFile {
                    name: f.name,
                    size: f.size,
                    sha256: f.sha256,
                    chunks: (0..count).map(|i| format!("{i:064x}")).collect(),
                })
            })
            .collect();
        let m = Manifest {
            format: if right_format {
                MANIFEST_FORMAT.to_owned()
            } else {
                model.clone()
            },
            model,
            release,
            chunk_size,
            files,
        };
        let text = serde_json::to_string_pretty(&m).unwrap();
        if let Ok(parsed) = Manifest::parse(&text) {
            assert_eq!(parsed, m);
            check(&parsed);
        }
    }
});
