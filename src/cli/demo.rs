//! `weightgate demo`: a sample model with a published release and an admin,
//! so the whole path can be tried on a fresh data directory.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::{
    app::App,
    db,
    domain::accounts,
    domain::models,
    types::{Email, Slug},
};

/// The demo model's card, as a lab would ship it beside the weights.
const CARD: &str = "---\nlicense: apache-2.0\n---\n\n# Demo Model 7B\n\n\
A synthetic model for trying weightgate: three shards of random bytes, signed \
and checksummed like real weights.\n\n\
| shards | format |\n|---|---|\n| 3 | safetensors |\n\n\
Use it to walk through applying, reviewing and downloading.\n";

pub(crate) const DEMO_SLUG: &str = "demo-model";
pub(crate) const DEMO_ADMIN: &str = "admin@example.org";

const TERMS: &str = "Demo Model License (demonstration only)

1. You may use these weights for research and evaluation.
2. You may not redistribute the weights or share your download links.
3. Publications that use the model cite it.
4. Access may be revoked if these terms are broken.";

/// The demo model's own questions, one of each common kind.
const QUESTIONS: &str = r#"[
    {"id": "role", "label": "Your role", "kind": "select", "options": ["Student", "Researcher", "Faculty", "Industry"], "required": true},
    {"id": "country", "label": "Country of your institution", "kind": "country", "required": true},
    {"id": "orcid", "label": "ORCID iD or a paper of yours", "kind": "url", "help": "For example https://orcid.org/0000-0002-1825-0097"},
    {"id": "no_redistribution", "label": "I will not redistribute the weights", "kind": "checkbox", "required": true}
]"#;

/// Sizes of the generated shards: a few MiB each, not multiples of any buffer.
const SHARDS: [u64; 3] = [3 * 1024 * 1024 + 17, 4 * 1024 * 1024 + 4099, 2 * 1024 * 1024 + 1];

/// Creates what is missing and prints how to sign in. The admin gets a fresh
/// one-time password on every run, since only the run that made it showed it.
pub(crate) async fn seed(app: &App) -> anyhow::Result<()> {
    let slug: Slug = DEMO_SLUG.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let actor = "demo";
    let model = match db::models::find_model_by_slug(app.db.pool(), DEMO_SLUG).await? {
        Some(model) => model,
        None => {
            let model = models::create(app, &slug, "Demo Model 7B (synthetic weights)", TERMS, actor).await?;
            models::set_questions(app, &slug, QUESTIONS, actor).await?;
            model
        }
    };
    if db::models::published_releases(app.db.pool(), &model.id)
        .await?
        .is_empty()
    {
        let dir = app.config.data_dir.join("demo-shards");
        std::fs::create_dir_all(&dir)?;
        for (i, size) in SHARDS.iter().enumerate() {
            let path = dir.join(format!("model-{:05}-of-{:05}.safetensors", i + 1, SHARDS.len()));
            if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(*size) {
                let mut bytes = vec![0u8; usize::try_from(*size)?];
                rand::fill(bytes.as_mut_slice());
                std::fs::write(&path, bytes)?;
            }
        }
        std::fs::write(dir.join("README.md"), CARD)?;
        models::publish(
            app,
            &slug,
            &dir,
            Some("v1"),
            1024 * 1024,
            actor,
            &models::PublishProgress::quiet(),
        )
        .await?;
    }

    let mut secret = [0u8; 15];
    rand::fill(&mut secret);
    let password = URL_SAFE_NO_PAD.encode(secret);
    let email: Email = DEMO_ADMIN.parse().map_err(|e: &str| anyhow::anyhow!(e))?;
    accounts::set_reviewer(app, &email, &password, true, actor).await?;

    println!();
    println!("  weightgate demo is running at {}", app.url("/"));
    println!("  model:            {}", app.url(&format!("/models/{DEMO_SLUG}")));
    println!("  admin sign-in:    {}", app.url("/admin"));
    println!("  admin e-mail:     {DEMO_ADMIN}");
    println!("  admin password:   {password}   (new on every start)");
    println!("  e-mails land in:  {}", app.config.outbox_dir().display());
    println!();
    Ok(())
}
