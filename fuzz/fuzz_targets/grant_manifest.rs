//! The download client's reading of a grant manifest (the portal's JSON
//! answer): whatever a hostile or broken portal sends, what the client accepts
//! was signed by the pinned key, lists only files of the signed manifest, and
//! names only paths inside the download directory.
#![no_main]

use std::{
    collections::HashSet,
    io::Cursor,
    path::{Component, Path},
    sync::OnceLock,
};

use libfuzzer_sys::fuzz_target;
use minisign::{KeyPair, PublicKeyBox};
use weightgate::{
    client::{GrantManifest, verified_releases},
    crypto::manifests::Manifest,
};

struct Keys {
    pinned: KeyPair,
    pinned_pub: String,
    other_pub: String,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let pub_file = |pair: &KeyPair| pair.pk.to_box().map(PublicKeyBox::into_string).unwrap();
        let pinned = KeyPair::generate_unencrypted_keypair().unwrap();
        let other = KeyPair::generate_unencrypted_keypair().unwrap();
        Keys {
            pinned_pub: pub_file(&pinned),
            other_pub: pub_file(&other),
            pinned,
        }
    })
}

fn sign(text: &str) -> String {
    let k = &keys().pinned;
    minisign::sign(
        Some(&k.pk),
        &k.sk,
        Cursor::new(text.as_bytes()),
        Some("weightgate manifest"),
        None,
    )
    .unwrap()
    .into_string()
}

/// Signs every release's manifest text, leaving the rest as sent.
fn signed(body: &[u8]) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    for release in value.get_mut("releases")?.as_array_mut()? {
        let Some(text) = release.get("manifest").and_then(|m| m.as_str()) else {
            continue;
        };
        let signature = sign(text);
        if let Some(object) = release.as_object_mut() {
            object.insert("manifest_sig".into(), signature.into());
        }
    }
    serde_json::to_vec(&value).ok()
}

/// A path the client writes below its download directory.
fn stays_inside(release: &str, file: &str) {
    let path = Path::new(release).join(file);
    let components: Vec<Component> = path.components().collect();
    assert!(
        components.len() >= 2 && components.iter().all(|c| matches!(c, Component::Normal(_))),
        "{release:?}/{file:?} leaves the download directory"
    );
}

// The first byte's low bit says whether to sign each release's `manifest`
// text with the pinned key, so the checks after the signature are reached;
// the rest is the portal's answer.
fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let body = if flags & 1 == 1 {
        match signed(body) {
            Some(body) => body,
            None => return,
        }
    } else {
        body.to_vec()
    };
    let Ok(grant) = GrantManifest::parse(&body) else {
        return;
    };
    let Ok(releases) = verified_releases(&grant, &keys().pinned_pub) else {
        return;
    };
    if !releases.is_empty() {
        assert!(
            verified_releases(&grant, &keys().other_pub).is_err(),
            "manifests verified under a key that did not sign them"
        );
    }
    let mut seen_releases = HashSet::new();
    for (manifest, urls) in &releases {
        assert_eq!(
            Manifest::parse(&serde_json::to_string(manifest).unwrap())
                .as_ref()
                .ok(),
            Some(manifest)
        );
        seen_releases.insert(&manifest.release);
        for f in &manifest.files {
            stays_inside(&manifest.release, &f.name);
        }
        for name in urls.keys() {
            assert!(
                manifest.files.iter().any(|f| &f.name == name),
                "a link for {name:?}, which the signed manifest does not list"
            );
        }
    }
});
